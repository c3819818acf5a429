/*
 * candles.js: the chart's candles as data, no DOM: history first, then live bars on top.
 *
 * Timeframes (TIMEFRAMES below):
 *   1s  A   native: the relay's per-second aggregates are the candles, history and live alike
 *   1m  AM  native: the per-minute aggregates are the candles
 *   5m, 1h, 1D  derived: the history is Massive's bars of that length (the relay's `history`
 *       with timespan/multiplier on the AM channel, from REST), then the minute bars of the
 *       last candle's window (a second `history`, timespan minute, from its start); the LIVE
 *       candles are built here, in CandleBook.live(), from the live per-minute bars (AM): each
 *       minute bar is put into the candle of its window (open of the first minute, high/low
 *       over all, close of the last, volumes summed; a minute sent again replaces itself).
 *
 * A bar is {s, o, h, l, c, v}: s the window start in Unix ms. A bar for the window of the last
 * candle replaces it (native) or updates it (derived); one for a later window appends; one for
 * an earlier window is ignored, so the seam between history and live never holds a window twice.
 */
(function (root) {
  "use strict";

  const SECOND = 1000;
  const MINUTE = 60 * SECOND;
  const HOUR = 60 * MINUTE;
  const DAY = 24 * HOUR;

  const TIMEFRAMES = Object.freeze({
    "1s": { key: "1s", ev: "A", span: SECOND, native: true, label: "1-second candles (A)" },
    "1m": { key: "1m", ev: "AM", span: MINUTE, native: true, label: "1-minute candles (AM)" },
    "5m": {
      key: "5m", ev: "AM", span: 5 * MINUTE, native: false, timespan: "minute", multiplier: 5,
      label: "5-minute candles (history: REST; live: built from AM)",
    },
    "1h": {
      key: "1h", ev: "AM", span: HOUR, native: false, timespan: "hour", multiplier: 1,
      label: "1-hour candles (history: REST; live: built from AM)",
    },
    "1D": {
      key: "1D", ev: "AM", span: DAY, native: false, timespan: "day", multiplier: 1,
      label: "daily candles (history: REST; live: built from AM)",
    },
  });

  /** An aggregate event as a bar. */
  function toBar(ev) {
    return {
      s: ev.s,
      o: ev.o,
      h: ev.h,
      l: ev.l,
      c: ev.c,
      v: typeof ev.v === "number" ? ev.v : 0,
    };
  }

  /** The length of an aggregate event's window (ms), or null without one. */
  function spanOf(ev) {
    return typeof ev.e === "number" && typeof ev.s === "number" ? ev.e - ev.s : null;
  }

  function usable(ev) {
    return (
      ev &&
      typeof ev.s === "number" &&
      [ev.o, ev.h, ev.l, ev.c].every((x) => typeof x === "number" && isFinite(x))
    );
  }

  class CandleBook {
    constructor(timeframe) {
      this.tf = timeframe;
      this.bars = []; // sorted by s, one per window
      this._anchor = 0; // derived: window starts are anchor + k * span
      this._base = null; // derived: the last candle as history gave it (REST's partial window)
      this._minutes = new Map(); // derived: live minute bars merged into the last candle, by s
      this.ignored = 0; // live bars older than the last candle
    }

    /** Whether a history answer's event is one of this timeframe's candles (derived: the REST
     * bars are as long as a candle, the live minute bars much shorter). */
    isCandle(ev) {
      if (this.tf.native) return ev.ev === this.tf.ev;
      const span = spanOf(ev);
      return ev.ev === this.tf.ev && span !== null && span >= this.tf.span / 2;
    }

    /** Whether a live event feeds the forming candle (derived: the per-minute bars). */
    isLiveBar(ev) {
      if (this.tf.native) return ev.ev === this.tf.ev;
      const span = spanOf(ev);
      return ev.ev === this.tf.ev && (span === null || span < this.tf.span / 2);
    }

    /** Replace everything with history: ``events`` the candles (any order; a window given
     * twice: the later wins) and, for a derived timeframe, ``minutes``: the minute bars from the
     * last candle's start on (REST's, joined by the relay with its live ones). Those rebuild the
     * last candle exactly, and the live minutes after them replace theirs by start: a minute
     * REST had while it was still forming is counted once, in its final form. */
    load(events, minutes) {
      const byStart = new Map();
      for (const ev of events) if (usable(ev)) byStart.set(ev.s, toBar(ev));
      this.bars = Array.from(byStart.values()).sort((a, b) => a.s - b.s);
      const last = this.bars[this.bars.length - 1];
      this._anchor = last ? last.s : 0;
      this._base = last ? Object.assign({}, last) : null;
      this._minutes = new Map();
      if (!this.tf.native && minutes && minutes.length) {
        const byMinute = new Map();
        for (const m of minutes) if (usable(m)) byMinute.set(m.s, m);
        const sorted = Array.from(byMinute.values()).sort((a, b) => a.s - b.s);
        if (last && sorted.some((m) => this.windowOf(m.s) === last.s)) this._base = null;
        for (const m of sorted) if (!last || this.windowOf(m.s) >= last.s) this.live(m);
      }
      return this.bars;
    }

    /** Start of the window (ms) a live bar starting at ``s`` belongs to. */
    windowOf(s) {
      if (this.tf.native) return s;
      const span = this.tf.span;
      return this._anchor + Math.floor((s - this._anchor) / span) * span;
    }

    /** A live bar: the candle it made or changed, or null when it is older than the last one. */
    live(ev) {
      if (!usable(ev)) return null;
      const last = this.bars[this.bars.length - 1];
      const start = this.windowOf(ev.s);
      if (last && start < last.s) {
        this.ignored += 1;
        return null;
      }
      if (this.tf.native) {
        const bar = toBar(ev);
        if (last && start === last.s) this.bars[this.bars.length - 1] = bar;
        else this.bars.push(bar);
        return bar;
      }
      // Derived: the minute goes into the candle of its window (a minute sent again replaces
      // its earlier version there), and the candle is recomputed from its base and minutes.
      let bar = last;
      if (!last || start > last.s) {
        bar = { s: start, o: ev.o, h: ev.h, l: ev.l, c: ev.c, v: 0 };
        this.bars.push(bar);
        this._base = null;
        this._minutes = new Map();
      }
      this._minutes.set(ev.s, toBar(ev));
      this._recompute(bar);
      return bar;
    }

    _recompute(bar) {
      const minutes = Array.from(this._minutes.values()).sort((a, b) => a.s - b.s);
      const base = this._base && this._base.s === bar.s ? this._base : null;
      const first = base || minutes[0];
      bar.o = first.o;
      bar.h = Math.max(base ? base.h : -Infinity, ...minutes.map((m) => m.h));
      bar.l = Math.min(base ? base.l : Infinity, ...minutes.map((m) => m.l));
      bar.c = minutes.length ? minutes[minutes.length - 1].c : base.c;
      bar.v = (base ? base.v : 0) + minutes.reduce((sum, m) => sum + m.v, 0);
    }
  }

  root.TIMEFRAMES = TIMEFRAMES;
  root.CandleBook = CandleBook;
})(typeof window !== "undefined" ? window : globalThis);
