/*
 * chart.js: the dashboard's candle chart, drawn by TradingView's lightweight-charts
 * (vendor/lightweight-charts.standalone.production.js, installed by `make` from the npm
 * registry: web-vendor/). Candles with volume in a pane below, a crosshair whose bar the OHLC
 * legend shows (the last bar when the pointer is elsewhere), zoom (wheel, pinch) and pan
 * (drag), fit to the data, and a time scale that follows new bars while it is at the right
 * edge.
 *
 *   const chart = new CandleChart(element, {onLegend: (bar, hovered) => ...});
 *   chart.setBars(bars);      // [{s, o, h, l, c, v}] sorted by s (Unix ms): the whole series
 *   chart.update(bar);        // the last candle again (same s) or a new one after it
 *   chart.barCount(); chart.lastBar(); chart.fit(); chart.setSpan(60000); chart.clear();
 *
 * Times: the library labels its axis in UTC, so candles are placed at their start shifted by
 * the browser's UTC offset: the axis and the legend read in the viewer's local time.
 */
(function (root) {
  "use strict";

  const THEME = {
    bg: "#11161d",
    grid: "#1a222c",
    text: "#8a98a8",
    border: "#1e2731",
    up: "#26a69a",
    down: "#ef5350",
    volumeUp: "rgba(38, 166, 154, 0.45)",
    volumeDown: "rgba(239, 83, 80, 0.45)",
    crosshair: "#5d6b7a",
  };

  /** Seconds for the chart's time axis: local wall-clock time expressed as if it were UTC. */
  function chartTime(ms) {
    return Math.floor(ms / 1000) - new Date(ms).getTimezoneOffset() * 60;
  }

  class CandleChart {
    constructor(container, options) {
      const o = options || {};
      const LWC = root.LightweightCharts;
      if (!LWC) throw new Error("lightweight-charts is missing: run `make run` (it installs the vendor files)");
      this.container = container;
      this.onLegend = o.onLegend || null;
      this.span = o.span || 60000;
      this.chart = LWC.createChart(container, {
        autoSize: true,
        layout: {
          background: { type: LWC.ColorType.Solid, color: THEME.bg },
          textColor: THEME.text,
          fontSize: 11,
          // The page shows TradingView's attribution itself (index.html): the logo would
          // need an inline <style>, which the page's Content-Security-Policy refuses.
          attributionLogo: false,
          panes: { separatorColor: THEME.border, separatorHoverColor: "rgba(138, 152, 168, 0.15)" },
        },
        grid: { vertLines: { color: THEME.grid }, horzLines: { color: THEME.grid } },
        crosshair: {
          mode: LWC.CrosshairMode.Normal,
          vertLine: { color: THEME.crosshair, labelBackgroundColor: "#2b3642" },
          horzLine: { color: THEME.crosshair, labelBackgroundColor: "#2b3642" },
        },
        rightPriceScale: { borderColor: THEME.border },
        timeScale: {
          borderColor: THEME.border,
          timeVisible: true,
          secondsVisible: this.span < 60000,
          rightOffset: 4,
          // New bars scroll into view while the right edge is shown; not after a pan.
          shiftVisibleRangeOnNewBar: true,
        },
      });
      this.candles = this.chart.addSeries(LWC.CandlestickSeries, {
        upColor: THEME.up,
        downColor: THEME.down,
        borderVisible: false,
        wickUpColor: THEME.up,
        wickDownColor: THEME.down,
      });
      this.volume = this.chart.addSeries(
        LWC.HistogramSeries,
        { priceFormat: { type: "volume" }, priceLineVisible: false, lastValueVisible: false },
        1 // its own pane, below the candles
      );
      const panes = this.chart.panes();
      panes[0].setStretchFactor(4);
      panes[1].setStretchFactor(1);
      this._bars = []; // what the series holds, in Unix ms
      this._byTime = new Map(); // chart time -> bar
      this.hovered = null;
      this.updates = 0;
      this.chart.subscribeCrosshairMove((param) => this._crosshair(param));
    }

    /** The whole series (history): replaces what is shown. */
    setBars(bars) {
      this._bars = bars.slice();
      this._byTime = new Map(this._bars.map((b) => [chartTime(b.s), b]));
      this.candles.setData(this._bars.map((b) => this._candle(b)));
      this.volume.setData(this._bars.map((b) => this._volume(b)));
      this._legend();
    }

    /** The last candle changed, or a newer one began; an older one is not accepted. */
    update(bar) {
      const last = this._bars[this._bars.length - 1];
      if (last && bar.s < last.s) return false;
      if (last && bar.s === last.s) this._bars[this._bars.length - 1] = bar;
      else this._bars.push(bar);
      this._byTime.set(chartTime(bar.s), bar);
      this.candles.update(this._candle(bar));
      this.volume.update(this._volume(bar));
      this.updates += 1;
      if (!this.hovered) this._legend();
      return true;
    }

    clear() {
      this.setBars([]);
    }

    /** The candle length (ms): seconds on the time axis below a minute, times below a day. */
    setSpan(span) {
      this.span = span;
      this.chart.applyOptions({ timeScale: { secondsVisible: span < 60000, timeVisible: span < 86400000 } });
    }

    /** Fit every candle into view. */
    fit() {
      this.chart.timeScale().fitContent();
    }

    /** Show the last ``count`` candles (and a little room on the right). */
    showLast(count) {
      const n = this._bars.length;
      if (!n) return;
      this.chart.timeScale().setVisibleLogicalRange({ from: Math.max(0, n - count) - 0.5, to: n + 3 });
    }

    barCount() {
      return this.candles.data().length;
    }

    lastBar() {
      return this._bars[this._bars.length - 1] || null;
    }

    bars() {
      return this._bars.slice();
    }

    _candle(b) {
      return { time: chartTime(b.s), open: b.o, high: b.h, low: b.l, close: b.c };
    }

    _volume(b) {
      return { time: chartTime(b.s), value: b.v || 0, color: b.c >= b.o ? THEME.volumeUp : THEME.volumeDown };
    }

    _crosshair(param) {
      const bar = param && param.time !== undefined ? this._byTime.get(param.time) : undefined;
      this.hovered = bar || null;
      this._legend();
    }

    _legend() {
      if (!this.onLegend) return;
      const bar = this.hovered || this.lastBar();
      const index = bar ? this._bars.indexOf(bar) : -1;
      const previous = index > 0 ? this._bars[index - 1] : null;
      this.onLegend(bar, !!this.hovered, previous);
    }
  }

  root.CandleChart = CandleChart;
})(typeof window !== "undefined" ? window : globalThis);
