/*
 * dashboard.js: the live page. Prices for a few stocks, a candle chart of one symbol (history
 * first, then live bars: candles.js, chart.js), a search box to chart any symbol, and one
 * option contract.
 *
 * URL parameters: ?token=  (the relay's client token)  ?symbols=AAPL,MSFT,...  ?symbol=AAPL
 * (the chart)  ?interval=1s|1m|5m|1h|1D  ?contract=O:SPY...
 *
 * Every event only updates the model and marks what changed; the DOM is written once per
 * animation frame. The chart (lightweight-charts, chart.js) is fed bar by bar.
 */
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const upper = (s) => s.trim().toUpperCase();
  // What the search box takes: a stock ticker (AAPL, BRK.B) or an index (I:SPX). Anything else
  // is refused here, before it is sent; the relay refuses what it does not serve, and says so.
  const SYMBOL = /^(?:[A-Z][A-Z0-9]{0,5}(?:\.[A-Z]{1,2})?|I:[A-Z][A-Z0-9]{0,9})$/;
  const TICKERS = (params.get("symbols") || "AAPL,MSFT,TSLA,NVDA,AMZN")
    .split(",")
    .map(upper)
    .filter((s) => SYMBOL.test(s) && !s.startsWith("I:"))
    .slice(0, 8);
  const CONTRACT = (params.get("contract") || defaultContract(new Date())).trim();
  const UNDERLYING = (/^O:([A-Z.]+)\d{6}[CP]\d{8}$/.exec(CONTRACT) || [])[1] || null;
  const asked = upper(params.get("symbol") || "");
  let chartSymbol = SYMBOL.test(asked) ? asked : TICKERS[0] || "AAPL";
  let chartTf = TIMEFRAMES[params.get("interval")] ? params.get("interval") : "1m";
  const HISTORY_TIMEOUT = 20000; // ms without the answer's status: show what came
  const VIEW_CANDLES = 200; // candles in view after a load (Fit shows all)

  /** The contract the simulator's default feed trades: SPY 600 call, third Friday of next month
   * (fastrelay/sim/symbols.py, _options_expiry and _OPTIONS). */
  function defaultContract(today) {
    let year = today.getFullYear();
    let month = today.getMonth() + 1; // next month, 0-based
    if (month === 12) {
      year += 1;
      month = 0;
    }
    const first = new Date(year, month, 1);
    const weekday = (first.getDay() + 6) % 7; // Monday = 0, as Python's weekday()
    const day = 1 + ((4 - weekday + 7) % 7) + 14;
    const two = (n) => String(n).padStart(2, "0");
    return "O:SPY" + two(year % 100) + two(month + 1) + two(day) + "C00600000";
  }

  function describeContract(ticker) {
    const m = /^O:([A-Z.]+)(\d{2})(\d{2})(\d{2})([CP])(\d{8})$/.exec(ticker);
    if (!m) return ticker;
    const months = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    const strike = Number(m[6]) / 1000;
    return `${m[1]} ${months[Number(m[3]) - 1]} ${Number(m[4])} '${m[2]} ${strike} ${m[5] === "C" ? "Call" : "Put"}`;
  }

  const $ = (id) => document.getElementById(id);
  const fmt = (x, d) => (typeof x === "number" && isFinite(x) ? x.toFixed(d === undefined ? 2 : d) : "—");
  const price = (x) => fmt(x, typeof x === "number" && Math.abs(x) < 1 ? 4 : 2);
  const two = (n) => String(n).padStart(2, "0");
  const clock = (ms) => {
    const d = new Date(ms);
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  };
  const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

  /** A candle's start as the legend shows it, to the precision of its timeframe. */
  function barTime(ms, span) {
    const d = new Date(ms);
    const date = `${MONTHS[d.getMonth()]} ${d.getDate()}`;
    if (span >= 86400000) return `${date} ${d.getFullYear()}`;
    const hm = `${two(d.getHours())}:${two(d.getMinutes())}`;
    const today = new Date().toDateString() === d.toDateString();
    return `${today ? "" : date + " "}${span < 60000 ? hm + ":" + two(d.getSeconds()) : hm}`;
  }

  // --- model ---

  const quotes = new Map(); // ticker -> {price, t, open, bid, ask, bs, as, shown}
  const stock = (sym) => {
    let q = quotes.get(sym);
    if (!q) quotes.set(sym, (q = { price: null, t: 0, open: null, bid: null, ask: null, bs: 0, as: 0, shown: null }));
    return q;
  };
  const option = { bid: null, ask: null, bs: 0, as: 0, bx: null, ax: null, last: null, size: 0, t: 0, x: null, qt: 0 };
  const optionTrades = []; // pending rows for the table
  const dirty = new Set();
  const feedsDown = new Set(); // markets whose upstream feed the relay says is interrupted
  let lastEventAt = 0;
  let frame = 0;
  const markDirty = (what) => {
    dirty.add(what);
    if (!frame) frame = requestAnimationFrame(render);
  };

  // --- the connection ---

  const client = new FastRelayClient();
  const chart = makeChart();
  const spark = new LineChart($("opt-spark"), { maxPoints: 160 });
  let book = new CandleBook(TIMEFRAMES[chartTf]); // the chart's candles as data (candles.js)

  function makeChart() {
    try {
      return new CandleChart($("chart"), { span: TIMEFRAMES[chartTf].span, onLegend: renderLegend });
    } catch (err) {
      // The vendor file is missing (a checkout without `make`): the rest of the page still works.
      $("chart").textContent = String(err.message || err);
      $("chart").classList.add("chart-missing");
      const none = () => 0;
      return { setBars: none, update: none, clear: none, setSpan: none, fit: none, showLast: none,
        barCount: none, lastBar: () => null, bars: () => [] }; // prettier-ignore
    }
  }

  function wanted() {
    const channels = [];
    for (const sym of TICKERS) channels.push(`T.${sym}`, `Q.${sym}`, `A.${sym}`, `AM.${sym}`);
    channels.push(`A.${chartSymbol}`, `AM.${chartSymbol}`);
    channels.push(`Q.${CONTRACT}`, `T.${CONTRACT}`);
    if (UNDERLYING) channels.push(`T.${UNDERLYING}`, `A.${UNDERLYING}`);
    return Array.from(new Set(channels));
  }

  function syncSubscriptions() {
    const want = new Set(wanted());
    const gone = Array.from(client.channels).filter((c) => !want.has(c));
    if (gone.length) client.unsubscribe(gone);
    client.subscribe(Array.from(want));
  }

  // --- the chart: history first, then live bars ---
  //
  // One history request at a time: the relay answers a channel's request with its bars and a
  // "history: CHANNEL (N events)" status, and two requests of one channel (AM.X for 1m, then
  // for 5m) would be told apart by nothing. A switch while one is out marks it stale and asks
  // again once its answer is in. While a request is out, the bars of the chart's channel are
  // collected: native timeframes (1s, 1m) take history and live bars alike, de-duplicated by
  // start. Derived ones (5m, 1h, 1D) ask twice: their candles (REST), then the minute bars
  // from the last candle's start, which rebuild that candle exactly (candles.js); minute bars
  // arriving during the first request are left out (the second answer has them). The answer
  // replaces the series; from then on each live bar updates it (CandleBook.live).

  const loading = { inflight: null, again: false };
  const historyStats = { loads: [], firstFullAt: null, requests: 0 };

  function sendHistory(request, options) {
    if (!client.history(request.label, options)) return false;
    historyStats.requests += 1;
    clearTimeout(request.timer);
    request.timer = setTimeout(() => finishHistory(request, "no history answer from the relay"), HISTORY_TIMEOUT);
    return true;
  }

  function requestHistory() {
    if (client.state !== "live") return;
    if (loading.inflight) {
      loading.again = true;
      return;
    }
    const tf = TIMEFRAMES[chartTf];
    const request = { label: `${tf.ev}.${chartSymbol}`, tf: chartTf, symbol: chartSymbol, phase: "candles" };
    Object.assign(request, { events: [], minutes: [], problem: null, timer: 0, sentAt: performance.now() });
    const options = tf.native ? undefined : { timespan: tf.timespan, multiplier: tf.multiplier };
    if (!sendHistory(request, options)) return;
    loading.inflight = request;
    $("chart-status").textContent = `loading ${request.label} ${tf.key} history…`;
  }

  /** The answer's status is in: load it (derived timeframes: after the minutes of the last
   * candle, asked now). */
  function answered(request) {
    if (request.phase === "candles" && !request.stale && !book.tf.native) {
      const last = request.events.reduce((s, ev) => (ev.s > s ? ev.s : s), -Infinity);
      const from = last > -Infinity ? last : Date.now() - book.tf.span;
      request.phase = "minutes";
      if (sendHistory(request, { timespan: "minute", multiplier: 1, from: Math.max(0, Math.floor(from)) })) return;
    }
    finishHistory(request, request.problem);
  }

  function finishHistory(request, problem) {
    if (loading.inflight !== request) return;
    clearTimeout(request.timer);
    loading.inflight = null;
    if (!request.stale) {
      book.load(request.events, request.minutes);
      chart.setBars(book.bars);
      const n = chart.barCount();
      if (n <= VIEW_CANDLES) chart.fit();
      else chart.showLast(VIEW_CANDLES);
      const now = performance.now();
      historyStats.loads.push({ label: request.label, tf: request.tf, bars: n, ms: now - request.sentAt, at: now });
      if (n >= 300 && historyStats.firstFullAt === null) historyStats.firstFullAt = now;
      $("chart-history").textContent = `history: ${n} candles`;
      $("chart-status").textContent = problem
        ? problem
        : `${n} candles of history in ${Math.round(now - request.sentAt)} ms, then live`;
      $("chart-status").classList.toggle("warn", !!problem);
    }
    if (loading.again) {
      loading.again = false;
      requestHistory();
    }
  }

  /** A connection ended: an answer still out will never come. */
  function dropHistoryRequest() {
    if (loading.inflight) clearTimeout(loading.inflight.timer);
    loading.inflight = null;
    loading.again = false;
  }

  function onChartAggregate(ev) {
    if (ev.sym !== chartSymbol) return;
    const request = loading.inflight;
    if (request) {
      if (request.stale) return;
      if (request.phase === "candles" && book.isCandle(ev)) request.events.push(ev);
      else if (request.phase === "minutes" && book.isLiveBar(ev)) request.minutes.push(ev);
      return;
    }
    if (!book.isLiveBar(ev)) return;
    const bar = book.live(ev);
    if (bar) chart.update(bar);
  }

  /** A status about the history request out: "done", "problem" (Massive's bars missing, the
   * relay's own follow), "refused" (no answer follows), or "" when it is about something else. */
  function onHistoryStatus(status) {
    const request = loading.inflight;
    const message = status.message || "";
    if (!request) return "";
    if (status.status === "success") {
      const m = /^history: (\S+) \((\d+) events\)/.exec(message);
      if (!m || m[1] !== request.label) return "";
      answered(request);
      return "done";
    }
    if (status.status !== "error") return "";
    if (message.endsWith(`(${request.label})`)) {
      request.problem = message.replace(/ \([^)]*\)$/, "");
      return "problem";
    }
    // Refused as a whole: no bars and no success status follow.
    if (message.startsWith("history") || (message.startsWith("invalid channel") && message.includes(request.label))) {
      finishHistory(request, message);
      return "refused";
    }
    return "";
  }

  // --- the connection's events ---

  client.on("state", (state, info) => {
    if (state !== "live") feedsDown.clear(); // a new connection starts from a clean slate
    document.body.dataset.state = state;
    $("conn").dataset.state = state;
    $("conn-label").textContent = state.toUpperCase();
    if (state === "live") {
      dropHistoryRequest(); // asked on the previous connection
      requestHistory(); // history first (again after a reconnect: it fills the gap)
    }
    renderConnDetail(info);
  });

  // A slow link: the relay sends the latest quotes and bars only (every trade) until it catches up.
  client.on("reduced", () => renderConnDetail(null));

  client.on("status", (status) => {
    const message = status.message || "";
    const handled = onHistoryStatus(status);
    if (handled === "refused" && message.includes(`.${chartSymbol}`)) showSymbolError(message, true);
    if (handled) return;
    if (status.status === "success" && message.startsWith("history: ")) return;
    // The relay stays up while its upstream (Massive) reconnects, and says so; events in
    // between are not replayed.
    const down = /^(\S+) feed interrupted/.exec(message);
    const up = /^(\S+) feed restored/.exec(message);
    if (status.status === "error" && down) {
      feedsDown.add(down[1]);
      renderConnDetail(null);
    } else if (status.status === "success" && up && feedsDown.delete(up[1])) {
      renderConnDetail(null);
    } else if (status.status === "error") {
      // A channel of the chart's symbol refused (a market this relay does not serve, ...);
      // a history answer's problems are the chart's (shown under it).
      if (message.includes(`.${chartSymbol}`) && !message.startsWith("history")) showSymbolError(message, true);
      else console.warn("fastrelay:", message);
    }
  });

  client.on("T", (ev) => {
    lastEventAt = Date.now();
    if (ev.sym === CONTRACT) {
      if (ev.t >= option.t) Object.assign(option, { last: ev.p, size: ev.s, t: ev.t, x: ev.x });
      optionTrades.push(ev);
      spark.add(ev.p);
      markDirty("option");
      return;
    }
    if (quotes.has(ev.sym) || TICKERS.includes(ev.sym) || ev.sym === UNDERLYING) {
      const q = stock(ev.sym);
      if (ev.t >= q.t) {
        q.price = ev.p;
        q.t = ev.t;
        markDirty(ev.sym);
      }
    }
  });

  client.on("Q", (ev) => {
    lastEventAt = Date.now();
    if (ev.sym === CONTRACT) {
      if (ev.t >= option.qt) {
        Object.assign(option, { bid: ev.bp, ask: ev.ap, bs: ev.bs, as: ev.as, bx: ev.bx, ax: ev.ax, qt: ev.t });
      }
      markDirty("option");
      return;
    }
    const q = stock(ev.sym);
    Object.assign(q, { bid: ev.bp, ask: ev.ap, bs: ev.bs, as: ev.as });
    if (q.price === null && ev.bp && ev.ap) q.price = (ev.bp + ev.ap) / 2;
    markDirty(ev.sym);
  });

  function onAggregate(ev) {
    lastEventAt = Date.now();
    onChartAggregate(ev);
    // The cards take the live aggregates (and their last values), not the chart's history:
    // while a history request of that symbol is out its bars are the answer's.
    if (!TICKERS.includes(ev.sym) && ev.sym !== UNDERLYING) return;
    if (loading.inflight && loading.inflight.symbol === ev.sym) return;
    if (typeof ev.e === "number" && ev.e - ev.s > 60000) return;
    const q = stock(ev.sym);
    if (typeof ev.op === "number") q.open = ev.op;
    // An aggregate (live, last value or history) sets the price only if nothing newer did.
    if (ev.e > q.t) {
      q.price = ev.c;
      q.t = ev.e;
    }
    markDirty(ev.sym);
  }
  client.on("A", onAggregate);
  client.on("AM", onAggregate);

  // --- rendering, once per animation frame ---

  const cards = new Map();

  function buildCards() {
    const box = $("tickers");
    for (const sym of TICKERS) {
      const card = document.createElement("button");
      card.type = "button";
      card.className = "card";
      card.dataset.symbol = sym;
      card.innerHTML =
        '<div class="row"><span class="sym"></span><span class="change num">—</span></div>' +
        '<div class="price num">—</div><div class="bidask num">&nbsp;</div>';
      card.querySelector(".sym").textContent = sym;
      card.addEventListener("click", () => switchChart(sym, chartTf));
      box.appendChild(card);
      cards.set(sym, {
        card: card,
        price: card.querySelector(".price"),
        change: card.querySelector(".change"),
        bidask: card.querySelector(".bidask"),
      });
    }
  }

  function flash(el, up) {
    el.classList.remove("flash-up", "flash-down");
    void el.offsetWidth; // restart the animation
    el.classList.add(up ? "flash-up" : "flash-down");
  }

  function renderCard(sym) {
    const view = cards.get(sym);
    const q = quotes.get(sym);
    if (!view || !q) return;
    if (q.price !== null && q.price !== q.shown) {
      if (q.shown !== null) flash(view.price, q.price > q.shown);
      q.shown = q.price;
      view.price.textContent = fmt(q.price);
    }
    if (q.open && q.price !== null) {
      const diff = q.price - q.open;
      view.change.textContent = `${diff >= 0 ? "+" : ""}${fmt(diff)} (${fmt((100 * diff) / q.open)}%)`;
      view.change.className = `change num ${diff >= 0 ? "up" : "down"}`;
    }
    if (q.bid !== null) view.bidask.textContent = `bid ${fmt(q.bid)} · ask ${fmt(q.ask)}`;
  }

  function exchangeCell(id) {
    const venue = optionExchange(id);
    const cell = document.createElement("td");
    cell.textContent = venue.short;
    cell.title = venue.mic ? `${venue.name} (${venue.mic}, Massive id ${id})` : venue.name;
    return cell;
  }

  function renderOption() {
    $("opt-bid").textContent = fmt(option.bid);
    $("opt-ask").textContent = fmt(option.ask);
    const side = (size, x) => (x === null || x === undefined ? `× ${size}` : `× ${size} · ${optionExchange(x).short}`);
    $("opt-bid-size").textContent = option.bid !== null ? side(option.bs, option.bx) : "";
    $("opt-ask-size").textContent = option.ask !== null ? side(option.as, option.ax) : "";
    if (option.bid !== null && option.ask !== null) {
      $("opt-mid").textContent = fmt((option.bid + option.ask) / 2, 3);
      $("opt-spread").textContent = `spread ${fmt(option.ask - option.bid)}`;
    }
    if (option.last !== null) {
      const venue = option.x === null ? "" : ` on ${optionExchange(option.x).short}`;
      $("opt-last").textContent = `${fmt(option.last)} × ${option.size} at ${clock(option.t)}${venue}`;
    }
    const body = $("opt-trades");
    for (const ev of optionTrades.splice(0)) {
      const row = document.createElement("tr");
      row.className = "new";
      for (const text of [clock(ev.t), fmt(ev.p), String(ev.s)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      row.appendChild(exchangeCell(ev.x));
      body.insertBefore(row, body.firstChild);
    }
    while (body.children.length > 8) body.removeChild(body.lastChild);
  }

  /** The OHLC legend: the bar under the crosshair, else the last one (chart.js calls it). */
  function renderLegend(bar, hovered, previous) {
    const legend = $("chart-legend");
    legend.dataset.hovered = String(!!hovered);
    if (!bar) {
      legend.textContent = loading.inflight ? "loading…" : "no candles yet";
      legend.classList.remove("up", "down");
      return;
    }
    const change = previous ? bar.c - previous.c : bar.c - bar.o;
    const base = previous ? previous.c : bar.o;
    const pct = base ? ` (${change >= 0 ? "+" : ""}${fmt((100 * change) / base)}%)` : "";
    legend.textContent =
      `${barTime(bar.s, TIMEFRAMES[chartTf].span)}  O ${price(bar.o)}  H ${price(bar.h)}  ` +
      `L ${price(bar.l)}  C ${price(bar.c)}  V ${Math.round(bar.v).toLocaleString()}${pct}`;
    legend.classList.toggle("up", change >= 0);
    legend.classList.toggle("down", change < 0);
  }

  function render() {
    frame = 0;
    for (const what of dirty) {
      if (what === "option") renderOption();
      else {
        renderCard(what);
        if (what === UNDERLYING) {
          const q = quotes.get(what);
          if (q && q.price !== null) $("opt-underlying-price").textContent = fmt(q.price);
        }
      }
    }
    dirty.clear();
  }

  function renderConnDetail(info) {
    const detail = $("conn-detail");
    const conn = $("conn");
    if (client.state === "live" && feedsDown.size) conn.dataset.feed = "interrupted";
    else delete conn.dataset.feed;
    if (client.state === "live" && client.reduced) conn.dataset.reduced = "true";
    else delete conn.dataset.reduced;
    if (client.state === "live" && feedsDown.size) {
      detail.textContent = `${Array.from(feedsDown).join(", ")} feed interrupted: the relay is reconnecting`;
    } else if (client.state === "live" && client.reduced) {
      detail.textContent = "reduced updates: the link is behind, latest quotes only (every trade)";
    } else if (client.state === "reconnecting" && client.nextRetryAt) {
      const left = Math.max(0, (client.nextRetryAt - Date.now()) / 1000);
      detail.textContent = `retry in ${left.toFixed(1)} s · attempt ${client.retries}`;
    } else if (client.state === "reconnecting") {
      detail.textContent = `attempt ${client.retries} · connecting`;
    } else if (client.state === "stopped") {
      detail.textContent = client.reason || (info && info.reason) || "";
    } else {
      detail.textContent = "";
    }
    detail.title = client.lastClose ? `last close: ${client.lastClose.code} ${client.lastClose.reason}` : "";
  }

  // --- the chart's symbol and timeframe ---

  function setChartTitle() {
    $("chart-title").textContent = chartSymbol;
    $("chart-kind").textContent = TIMEFRAMES[chartTf].label;
    for (const [sym, view] of cards) view.card.setAttribute("aria-pressed", String(sym === chartSymbol));
    for (const b of document.querySelectorAll(".toggle button")) {
      b.setAttribute("aria-pressed", String(b.dataset.tf === chartTf));
    }
  }

  /** Chart another symbol or timeframe: an empty chart, then its history, then live bars. */
  function switchChart(sym, tf) {
    if (sym === chartSymbol && tf === chartTf) return;
    chartSymbol = sym;
    chartTf = tf;
    book = new CandleBook(TIMEFRAMES[tf]);
    chart.setSpan(TIMEFRAMES[tf].span);
    chart.clear();
    $("chart-history").textContent = "";
    if (loading.inflight) loading.inflight.stale = true;
    setChartTitle();
    syncSubscriptions();
    requestHistory();
    const url = new URL(location.href);
    url.searchParams.set("symbol", sym);
    url.searchParams.set("interval", tf);
    history.replaceState(null, "", url);
  }

  function showSymbolError(message, fromRelay) {
    const box = $("symbol-error");
    box.textContent = message;
    box.dataset.source = fromRelay ? "relay" : "page";
  }

  for (const b of document.querySelectorAll(".toggle button")) {
    b.addEventListener("click", () => switchChart(chartSymbol, b.dataset.tf));
  }
  $("chart-fit").addEventListener("click", () => chart.fit());
  $("symbol-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = $("symbol-input");
    const sym = upper(input.value);
    if (!SYMBOL.test(sym)) {
      showSymbolError(
        sym ? `"${sym.slice(0, 12)}" is not a ticker (letters and digits, e.g. AAPL, BRK.B, I:SPX)` : "",
        false
      );
      input.setAttribute("aria-invalid", "true");
      return;
    }
    input.removeAttribute("aria-invalid");
    showSymbolError("", false);
    input.value = sym;
    switchChart(sym, chartTf);
  });

  // --- start ---

  buildCards();
  $("opt-name").textContent = describeContract(CONTRACT);
  $("opt-contract").textContent = CONTRACT;
  $("opt-underlying").textContent = UNDERLYING || "—";
  $("source").textContent = `relay ${client.url}`;
  setChartTitle();
  syncSubscriptions();
  client.start();

  let counted = 0;
  setInterval(() => {
    $("rate").textContent = String(client.events - counted);
    counted = client.events;
    if (lastEventAt) $("last-update").textContent = `last event ${clock(lastEventAt)}`;
  }, 1000);
  setInterval(() => renderConnDetail(null), 250);

  // For tests and the curious: window.dashboard.chart.barCount(), .history.firstFullAt, ...
  window.dashboard = {
    client: client,
    chart: chart,
    get book() {
      return book;
    },
    get symbol() {
      return chartSymbol;
    },
    get timeframe() {
      return chartTf;
    },
    history: historyStats,
    loading: loading,
    switchChart: switchChart,
    spark: spark,
    quotes: quotes,
    option: option,
    contract: CONTRACT,
  };
})();
