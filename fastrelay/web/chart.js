/*
 * chart.js: two small canvas charts for the dashboard, no dependencies.
 *
 * CandleChart: candles (one per aggregate window, de-duplicated by their start `s`), volume
 * bars and the trades as a line on top. Drawing happens at most once per animation frame,
 * and only what changed is redrawn: while the time window and the price scale stay put, a
 * trade or a new candle repaints just the columns it touches (a "tail" draw); a full redraw
 * happens when the window scrolls by a slot, the scale must grow, or the canvas is resized.
 *
 * LineChart: a sparkline (the option's prices), redrawn whole when dirty (a few hundred points).
 */
(function (root) {
  "use strict";

  const THEME = {
    bg: "#11161d",
    grid: "#1e2731",
    text: "#8a98a8",
    up: "#26a69a",
    down: "#ef5350",
    trade: "rgba(245, 197, 66, 0.8)",
    tag: "#f5c542",
    tagText: "#0b0f14",
    volume: "rgba(138, 152, 168, 0.28)",
    ghost: "rgba(200, 210, 220, 0.55)",
  };
  const FONT = "11px system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif";
  const AXIS_W = 64; // price labels on the right
  const TIME_H = 20; // time labels at the bottom
  const PAD = 8;

  function niceStep(range, count) {
    const raw = range / Math.max(1, count);
    const mag = Math.pow(10, Math.floor(Math.log10(raw)));
    const norm = raw / mag;
    return (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag;
  }

  function two(n) {
    return (n < 10 ? "0" : "") + n;
  }

  function clockLabel(ms, withSeconds) {
    const d = new Date(ms);
    const hm = two(d.getHours()) + ":" + two(d.getMinutes());
    return withSeconds ? hm + ":" + two(d.getSeconds()) : hm;
  }

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

  class CandleChart {
    constructor(canvas, options) {
      const o = options || {};
      this.canvas = canvas;
      this.interval = o.interval || 1000; // ms per candle
      this.decimals = o.decimals ?? 2;
      this.slotPx = o.slotPx || 9;
      this.maxCandles = o.maxCandles || 720;
      this.maxTrades = o.maxTrades || 5000;
      this.candles = []; // sorted by s
      this.byStart = new Map(); // s -> candle
      this.trades = []; // {t, p}, sorted by t
      this.view = null;
      this.fullDraws = 0;
      this.tailDraws = 0;
      this._full = true;
      this._touchedSlot = Infinity; // the leftmost slot changed since the last draw
      this._touchedLo = Infinity;
      this._touchedHi = -Infinity;
      this._touchedVolume = 0;
      this._raf = 0;
      this._gap = false;
      if (root.ResizeObserver) {
        new ResizeObserver(() => this.invalidate()).observe(canvas);
      } else {
        root.addEventListener("resize", () => this.invalidate());
      }
    }

    /** Data was missed (a reconnect): the trade line does not bridge the gap. */
    markGap() {
      this._gap = this.trades.length > 0;
    }

    /** Switch to another candle length (ms); drops what is shown. */
    reset(interval) {
      this.interval = interval || this.interval;
      this.candles = [];
      this.byStart.clear();
      this.trades = [];
      this.invalidate();
    }

    /** Add or replace (same `s`) one candle: {s, e, o, h, l, c, v}. */
    addCandle(ev) {
      const candle = { s: ev.s, o: ev.o, h: ev.h, l: ev.l, c: ev.c, v: ev.v || 0 };
      const known = this.byStart.get(candle.s);
      if (known) {
        Object.assign(known, candle);
      } else {
        let i = this.candles.length;
        while (i > 0 && this.candles[i - 1].s > candle.s) i -= 1;
        this.candles.splice(i, 0, candle);
        this.byStart.set(candle.s, candle);
        if (this.candles.length > this.maxCandles) {
          this.byStart.delete(this.candles.shift().s);
        }
      }
      this._touch(this._slot(candle.s), candle.l, candle.h, candle.v);
    }

    addTrade(t, p) {
      const trades = this.trades;
      let i = trades.length;
      while (i > 0 && trades[i - 1].t > t) i -= 1;
      trades.splice(i, 0, { t: t, p: p, gap: this._gap && i === trades.length });
      this._gap = false;
      // The segment from the previous trade is new too.
      const from = i > 0 ? trades[i - 1].t : t;
      this._touch(this._slot(from), p, p, 0);
      if (trades.length > this.maxTrades) trades.splice(0, trades.length - this.maxTrades);
    }

    _slot(t) {
      return Math.floor(t / this.interval);
    }

    _touch(slot, lo, hi, volume) {
      if (slot < this._touchedSlot) this._touchedSlot = slot;
      if (lo < this._touchedLo) this._touchedLo = lo;
      if (hi > this._touchedHi) this._touchedHi = hi;
      if (volume > this._touchedVolume) this._touchedVolume = volume;
      this._schedule();
    }

    invalidate() {
      this._full = true;
      this._schedule();
    }

    _schedule() {
      if (!this._raf) this._raf = root.requestAnimationFrame(() => this._frame());
    }

    lastPrice() {
      const t = this.trades[this.trades.length - 1];
      const c = this.candles[this.candles.length - 1];
      if (t && (!c || t.t >= c.s)) return t.p;
      return c ? c.c : null;
    }

    // --- drawing ---

    _frame() {
      this._raf = 0;
      const size = fitCanvas(this.canvas);
      const right = this._rightSlot();
      const v = this.view;
      const full =
        this._full ||
        !v ||
        right !== v.right ||
        size.width !== v.width ||
        size.height !== v.height ||
        this._touchedSlot < v.right - 1 ||
        this._touchedLo < v.lo ||
        this._touchedHi > v.hi ||
        this._touchedVolume > v.maxVolume;
      if (full) {
        this._drawFull(size, right);
      } else {
        this._drawTail(size, Math.max(v.first, this._touchedSlot));
      }
      this._full = false;
      this._touchedSlot = Infinity;
      this._touchedLo = Infinity;
      this._touchedHi = -Infinity;
      this._touchedVolume = 0;
    }

    _rightSlot() {
      const c = this.candles[this.candles.length - 1];
      const t = this.trades[this.trades.length - 1];
      let right = c ? this._slot(c.s) + 1 : -Infinity; // room for the forming candle
      if (t) right = Math.max(right, this._slot(t.t));
      return right === -Infinity ? null : right;
    }

    _layout(size) {
      const plot = {
        x: PAD,
        y: PAD,
        w: Math.max(10, size.width - AXIS_W - PAD),
        h: Math.max(10, size.height - TIME_H - PAD),
      };
      plot.volumeH = Math.round(plot.h * 0.18);
      plot.priceH = plot.h - plot.volumeH - 4;
      return plot;
    }

    _drawFull(size, right) {
      this.fullDraws += 1;
      const ctx = size.ctx;
      ctx.fillStyle = THEME.bg;
      ctx.fillRect(0, 0, size.width, size.height);
      const plot = this._layout(size);
      if (right === null) {
        this.view = null;
        ctx.fillStyle = THEME.text;
        ctx.font = FONT;
        ctx.textAlign = "center";
        ctx.fillText("waiting for data", plot.x + plot.w / 2, plot.y + plot.h / 2);
        return;
      }
      const n = Math.max(2, Math.floor(plot.w / this.slotPx));
      const first = right - n + 1;
      // Scale from what is visible; a little headroom so most new prices fit without a redraw.
      let lo = Infinity;
      let hi = -Infinity;
      let maxVolume = 0;
      for (const c of this.candles) {
        const slot = this._slot(c.s);
        if (slot < first || slot > right) continue;
        lo = Math.min(lo, c.l);
        hi = Math.max(hi, c.h);
        maxVolume = Math.max(maxVolume, c.v);
      }
      const startMs = first * this.interval;
      for (let i = this.trades.length - 1; i >= 0 && this.trades[i].t >= startMs; i -= 1) {
        lo = Math.min(lo, this.trades[i].p);
        hi = Math.max(hi, this.trades[i].p);
      }
      const mid = (lo + hi) / 2;
      const span = Math.max(hi - lo, Math.abs(mid) * 0.001, Math.pow(10, -this.decimals));
      lo = mid - span * 0.6;
      hi = mid + span * 0.6;
      this.view = {
        right: right,
        first: first,
        n: n,
        lo: lo,
        hi: hi,
        maxVolume: maxVolume * 1.25 || 1,
        width: size.width,
        height: size.height,
        plot: plot,
        step: niceStep(hi - lo, Math.max(2, Math.floor(plot.priceH / 48))),
      };
      this._paintColumns(ctx, first, right);
      this._paintTimeAxis(ctx);
      this._paintPriceAxis(ctx);
    }

    _drawTail(size, fromSlot) {
      this.tailDraws += 1;
      const ctx = size.ctx;
      this._paintColumns(ctx, fromSlot, this.view.right);
      this._paintPriceAxis(ctx);
    }

    _x(slot) {
      const v = this.view;
      return v.plot.x + (slot - v.first) * this.slotPx;
    }

    _y(price) {
      const v = this.view;
      return v.plot.y + ((v.hi - price) / (v.hi - v.lo)) * v.plot.priceH;
    }

    /** Repaint the plot between the left edge of slot `from` and the right edge of the plot. */
    _paintColumns(ctx, from, to) {
      const v = this.view;
      const plot = v.plot;
      const left = Math.max(plot.x, this._x(from));
      const width = plot.x + plot.w - left;
      ctx.save();
      ctx.beginPath();
      ctx.rect(left, plot.y, width, plot.h);
      ctx.clip();
      ctx.fillStyle = THEME.bg;
      ctx.fillRect(left, plot.y, width, plot.h);
      // Grid: price lines at the axis ticks, time lines at the labels.
      ctx.strokeStyle = THEME.grid;
      ctx.lineWidth = 1;
      ctx.beginPath();
      for (let p = Math.ceil(v.lo / v.step) * v.step; p <= v.hi; p += v.step) {
        const y = Math.round(this._y(p)) + 0.5;
        ctx.moveTo(left, y);
        ctx.lineTo(left + width, y);
      }
      const every = this._labelEvery();
      for (let slot = Math.ceil(from / every) * every; slot <= to; slot += every) {
        const x = Math.round(this._x(slot)) + 0.5;
        ctx.moveTo(x, plot.y);
        ctx.lineTo(x, plot.y + plot.h);
      }
      ctx.stroke();
      // Candles and volume.
      const body = Math.max(1, this.slotPx - 3);
      const volumeBase = plot.y + plot.h;
      let hasCandle = false;
      for (let i = this.candles.length - 1; i >= 0; i -= 1) {
        const c = this.candles[i];
        const slot = this._slot(c.s);
        if (slot > to) continue;
        if (slot < from) break;
        if (slot === v.right) hasCandle = true;
        this._paintCandle(ctx, slot, c.o, c.h, c.l, c.c, body, false);
        const vh = (c.v / v.maxVolume) * plot.volumeH;
        ctx.fillStyle = THEME.volume;
        ctx.fillRect(this._x(slot) + 1, volumeBase - vh, body, vh);
      }
      // The forming candle, from the trades so far, until its aggregate arrives.
      if (!hasCandle && from <= v.right) {
        const startMs = v.right * this.interval;
        let o = null;
        let h = -Infinity;
        let l = Infinity;
        let c = null;
        for (let i = this.trades.length - 1; i >= 0 && this.trades[i].t >= startMs; i -= 1) {
          const p = this.trades[i].p;
          if (c === null) c = p;
          o = p;
          h = Math.max(h, p);
          l = Math.min(l, p);
        }
        if (c !== null) this._paintCandle(ctx, v.right, o, h, l, c, body, true);
      }
      // Trades on top: one line through every print from the previous one on.
      const startMs = from * this.interval;
      let i = this.trades.length - 1;
      while (i > 0 && this.trades[i].t >= startMs) i -= 1;
      if (i < this.trades.length - 1 || this.trades.length === 1) {
        ctx.strokeStyle = THEME.trade;
        ctx.lineWidth = 1;
        ctx.beginPath();
        for (let k = Math.max(0, i); k < this.trades.length; k += 1) {
          const tr = this.trades[k];
          const x = this._x(tr.t / this.interval); // a print sits where its time falls in its slot
          const y = this._y(tr.p);
          if (k === Math.max(0, i) || tr.gap) ctx.moveTo(x, y);
          else ctx.lineTo(x, y);
        }
        ctx.stroke();
      }
      ctx.restore();
    }

    _paintCandle(ctx, slot, o, h, l, c, body, ghost) {
      const x = this._x(slot) + 1;
      const color = ghost ? THEME.ghost : c >= o ? THEME.up : THEME.down;
      const mid = Math.round(x + body / 2) + 0.5;
      ctx.strokeStyle = color;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(mid, Math.round(this._y(h)));
      ctx.lineTo(mid, Math.round(this._y(l)));
      ctx.stroke();
      const top = Math.round(this._y(Math.max(o, c)));
      const bottom = Math.round(this._y(Math.min(o, c)));
      if (ghost) {
        ctx.strokeRect(Math.round(x) + 0.5, top + 0.5, body - 1, Math.max(1, bottom - top));
      } else {
        ctx.fillStyle = color;
        ctx.fillRect(Math.round(x), top, body, Math.max(2, bottom - top));
      }
    }

    _labelEvery() {
      // A time label (and grid line) every so many slots, on round times, >= 70 px apart.
      const steps = this.interval >= 60000 ? [1, 2, 5, 10, 15, 30, 60] : [5, 10, 15, 30, 60, 120, 300];
      for (const s of steps) if (s * this.slotPx >= 70) return s;
      return steps[steps.length - 1];
    }

    _paintTimeAxis(ctx) {
      const v = this.view;
      const y = v.plot.y + v.plot.h;
      ctx.fillStyle = THEME.bg;
      ctx.fillRect(0, y, v.width, v.height - y);
      ctx.fillStyle = THEME.text;
      ctx.font = FONT;
      ctx.textAlign = "center";
      ctx.textBaseline = "top";
      const every = this._labelEvery();
      for (let slot = Math.ceil(v.first / every) * every; slot <= v.right; slot += every) {
        const x = this._x(slot);
        if (x < v.plot.x + 20 || x > v.plot.x + v.plot.w - 20) continue;
        ctx.fillText(clockLabel(slot * this.interval, this.interval < 60000), x, y + 5);
      }
    }

    _paintPriceAxis(ctx) {
      const v = this.view;
      const x = v.plot.x + v.plot.w;
      ctx.fillStyle = THEME.bg;
      ctx.fillRect(x, 0, v.width - x, v.plot.y + v.plot.h + 1);
      ctx.font = FONT;
      ctx.textAlign = "left";
      ctx.textBaseline = "middle";
      ctx.fillStyle = THEME.text;
      const decimals = Math.max(0, Math.min(this.decimals, -Math.floor(Math.log10(v.step)) + 1));
      const last = this.lastPrice();
      const tagY =
        last === null ? -1e9 : Math.min(Math.max(this._y(last), v.plot.y + 8), v.plot.y + v.plot.priceH - 8);
      for (let p = Math.ceil(v.lo / v.step) * v.step; p <= v.hi; p += v.step) {
        const y = this._y(p);
        if (y < v.plot.y + 6 || y > v.plot.y + v.plot.priceH - 6 || Math.abs(y - tagY) < 14) continue;
        ctx.fillText(p.toFixed(decimals), x + 6, y);
      }
      if (last !== null) {
        const y = tagY;
        ctx.fillStyle = THEME.tag;
        ctx.fillRect(x + 2, y - 8, v.width - x - 4, 16);
        ctx.fillStyle = THEME.tagText;
        ctx.fillText(last.toFixed(this.decimals), x + 6, y);
      }
    }
  }

  class LineChart {
    constructor(canvas, options) {
      const o = options || {};
      this.canvas = canvas;
      this.maxPoints = o.maxPoints || 240;
      this.color = o.color || THEME.tag;
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
      ctx.fillStyle = THEME.bg;
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

  root.CandleChart = CandleChart;
  root.LineChart = LineChart;
})(typeof window !== "undefined" ? window : globalThis);
