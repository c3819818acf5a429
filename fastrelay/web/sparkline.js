/*
 * sparkline.js: a small canvas line (the option's recent trade prices), no dependencies;
 * redrawn whole when dirty (a few hundred points) at most once per animation frame.
 */
(function (root) {
  "use strict";

  const BG = "#11161d";
  const COLOR = "#f5c542";

  /** Keep a canvas's backing store at its CSS size times devicePixelRatio. */
  function fitCanvas(canvas) {
    const dpr = root.devicePixelRatio || 1;
    const width = Math.max(1, Math.round(canvas.clientWidth));
    const height = Math.max(1, Math.round(canvas.clientHeight));
    if (canvas.width !== Math.round(width * dpr) || canvas.height !== Math.round(height * dpr)) {
      canvas.width = Math.round(width * dpr);
      canvas.height = Math.round(height * dpr);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    return { ctx: ctx, width: width, height: height, dpr: dpr };
  }

  class LineChart {
    constructor(canvas, options) {
      const o = options || {};
      this.canvas = canvas;
      this.maxPoints = o.maxPoints || 240;
      this.color = o.color || COLOR;
      this.points = [];
      this.draws = 0;
      this._raf = 0;
      if (root.ResizeObserver) new ResizeObserver(() => this._schedule()).observe(canvas);
    }

    add(value) {
      this.points.push(value);
      if (this.points.length > this.maxPoints) this.points.shift();
      this._schedule();
    }

    _schedule() {
      if (!this._raf) this._raf = root.requestAnimationFrame(() => this._draw());
    }

    _draw() {
      this._raf = 0;
      this.draws += 1;
      const size = fitCanvas(this.canvas);
      const ctx = size.ctx;
      ctx.fillStyle = BG;
      ctx.fillRect(0, 0, size.width, size.height);
      const pts = this.points;
      if (pts.length < 2) return;
      let lo = Math.min.apply(null, pts);
      let hi = Math.max.apply(null, pts);
      if (hi - lo < 1e-9) {
        lo -= 0.5;
        hi += 0.5;
      }
      const w = size.width - 8;
      const h = size.height - 8;
      const x = (i) => 4 + (i / (this.maxPoints - 1)) * w;
      const y = (p) => 4 + ((hi - p) / (hi - lo)) * h;
      const offset = this.maxPoints - pts.length;
      ctx.strokeStyle = this.color;
      ctx.lineWidth = 1.5;
      ctx.beginPath();
      pts.forEach((p, i) => (i ? ctx.lineTo(x(i + offset), y(p)) : ctx.moveTo(x(i + offset), y(p))));
      ctx.stroke();
      ctx.fillStyle = this.color;
      ctx.beginPath();
      ctx.arc(x(pts.length - 1 + offset), y(pts[pts.length - 1]), 2.5, 0, Math.PI * 2);
      ctx.fill();
    }
  }

  root.LineChart = LineChart;
})(typeof window !== "undefined" ? window : globalThis);
