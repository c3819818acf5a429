/*
 * dashboard.js: the live page. Prices for a few stocks, a chart of one stock (candles from
 * per-second or per-minute aggregates, trades as a line), and one option contract.
 *
 * URL parameters: ?token=  (the relay's client token)  ?symbols=AAPL,MSFT,...  ?symbol=AAPL
 * (the chart)  ?contract=O:SPY...  ?interval=1m
 *
 * Every event only updates the model and marks what changed; the DOM is written once per
 * animation frame, and the charts redraw incrementally (chart.js).
 */
(function () {
  "use strict";

  const params = new URLSearchParams(location.search);
  const upper = (s) => s.trim().toUpperCase();
  const TICKERS = (params.get("symbols") || "AAPL,MSFT,TSLA,NVDA,AMZN")
    .split(",")
    .map(upper)
    .filter((s) => /^[A-Z0-9.]{1,12}$/.test(s))
    .slice(0, 8);
  const CONTRACT = (params.get("contract") || defaultContract(new Date())).trim();
  const UNDERLYING = (/^O:([A-Z.]+)\d{6}[CP]\d{8}$/.exec(CONTRACT) || [])[1] || null;
  let chartSymbol = upper(params.get("symbol") || TICKERS[0] || "AAPL");
  let chartEv = params.get("interval") === "1m" ? "AM" : "A";

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
  const two = (n) => String(n).padStart(2, "0");
  const clock = (ms) => {
    const d = new Date(ms);
    return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`;
  };

  // --- model ---

  const quotes = new Map(); // ticker -> {price, t, open, bid, ask, bs, as, shown, dirty}
  const stock = (sym) => {
    let q = quotes.get(sym);
    if (!q) quotes.set(sym, (q = { price: null, t: 0, open: null, bid: null, ask: null, bs: 0, as: 0, shown: null }));
    return q;
  };
  const option = { bid: null, ask: null, bs: 0, as: 0, last: null, size: 0, t: 0, x: null, qt: 0 };
  const optionTrades = []; // pending rows for the table
  const chartTrades = []; // recent trades of the chart symbol, to refill after a switch
  const series = { A: new Map(), AM: new Map() }; // the chart symbol's candles by start time, per ev
  const historyCount = { A: null, AM: null }; // candles the relay had kept, per ev
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
  const chart = new CandleChart($("chart"), { interval: chartEv === "A" ? 1000 : 60000 });
  const spark = new LineChart($("opt-spark"), { maxPoints: 160 });

  function wanted() {
    const channels = [];
    for (const sym of TICKERS) channels.push(`T.${sym}`, `Q.${sym}`, `A.${sym}`, `AM.${sym}`);
    channels.push(`T.${chartSymbol}`, `A.${chartSymbol}`, `AM.${chartSymbol}`);
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

  function requestHistory() {
    // Candles at once: the relay's kept aggregates (oldest first), then live ones; de-duplicated
    // by start time, so asking again after a reconnect only fills the gap.
    client.history([`A.${chartSymbol}`, `AM.${chartSymbol}`]);
  }

  client.on("state", (state, info) => {
    if (state !== "live") feedsDown.clear(); // a new connection starts from a clean slate
    document.body.dataset.state = state;
    $("conn").dataset.state = state;
    $("conn-label").textContent = state.toUpperCase();
    if (state === "live") {
      if (client.lives > 1) chart.markGap(); // events during the outage are lost
      requestHistory();
    }
    renderConnDetail(info);
  });

  client.on("status", (status) => {
    const message = status.message || "";
    if (status.status === "success" && message.startsWith("history: ")) {
      const m = /^history: (A|AM)\.(\S+) \((\d+) events\)/.exec(message);
      if (m && m[2] === chartSymbol) {
        historyCount[m[1]] = Number(m[3]);
        renderHistoryCount();
      }
      return;
    }
    // The relay stays up while its upstream (Massive) reconnects, and says so; events in
    // between are not replayed.
    const down = /^(\S+) feed interrupted/.exec(message);
    const up = /^(\S+) feed restored/.exec(message);
    if (status.status === "error" && down) {
      feedsDown.add(down[1]);
      renderConnDetail(null);
    } else if (status.status === "success" && up && feedsDown.delete(up[1])) {
      if (up[1] === "stocks") chart.markGap();
      renderConnDetail(null);
    } else if (status.status === "error") {
      console.warn("fastrelay:", message);
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
    if (ev.sym === chartSymbol) {
      chart.addTrade(ev.t, ev.p);
      chartTrades.push(ev);
      if (chartTrades.length > 3000) chartTrades.splice(0, 1000);
    }
  });

  client.on("Q", (ev) => {
    lastEventAt = Date.now();
    if (ev.sym === CONTRACT) {
      if (ev.t >= option.qt) Object.assign(option, { bid: ev.bp, ask: ev.ap, bs: ev.bs, as: ev.as, qt: ev.t });
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
    const q = stock(ev.sym);
    if (typeof ev.op === "number") q.open = ev.op;
    // An aggregate (live, last value or history) sets the price only if nothing newer did.
    if (ev.e > q.t) {
      q.price = ev.c;
      q.t = ev.e;
    }
    markDirty(ev.sym);
    if (ev.sym === chartSymbol) {
      const kept = series[ev.ev];
      kept.set(ev.s, ev);
      if (kept.size > 720) kept.delete(kept.keys().next().value);
      if (ev.ev === chartEv) {
        chart.addCandle(ev);
        markDirty("legend");
      }
    }
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
      card.addEventListener("click", () => switchChart(sym));
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

  function renderOption() {
    $("opt-bid").textContent = fmt(option.bid);
    $("opt-ask").textContent = fmt(option.ask);
    $("opt-bid-size").textContent = option.bid !== null ? `× ${option.bs}` : "";
    $("opt-ask-size").textContent = option.ask !== null ? `× ${option.as}` : "";
    if (option.bid !== null && option.ask !== null) {
      $("opt-mid").textContent = fmt((option.bid + option.ask) / 2, 3);
      $("opt-spread").textContent = `spread ${fmt(option.ask - option.bid)}`;
    }
    if (option.last !== null) {
      $("opt-last").textContent = `${fmt(option.last)} × ${option.size} at ${clock(option.t)}`;
    }
    const body = $("opt-trades");
    for (const ev of optionTrades.splice(0)) {
      const row = document.createElement("tr");
      row.className = "new";
      for (const text of [clock(ev.t), fmt(ev.p), String(ev.s), String(ev.x)]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.appendChild(cell);
      }
      body.insertBefore(row, body.firstChild);
    }
    while (body.children.length > 8) body.removeChild(body.lastChild);
  }

  function renderHistoryCount() {
    const n = historyCount[chartEv];
    $("chart-history").textContent = n === null ? "" : `history: ${n} candles`;
  }

  function renderLegend() {
    const c = chart.candles[chart.candles.length - 1];
    $("chart-legend").textContent = c
      ? `O ${fmt(c.o)}  H ${fmt(c.h)}  L ${fmt(c.l)}  C ${fmt(c.c)}  V ${c.v.toLocaleString()}`
      : "";
  }

  function render() {
    frame = 0;
    for (const what of dirty) {
      if (what === "option") renderOption();
      else if (what === "legend") renderLegend();
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
    if (client.state === "live" && feedsDown.size) {
      detail.textContent = `${Array.from(feedsDown).join(", ")} feed interrupted: the relay is reconnecting`;
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

  // --- the chart's symbol and candle length ---

  function setChartTitle() {
    $("chart-title").textContent = chartSymbol;
    $("chart-kind").textContent = chartEv === "A" ? "per-second aggregates (A)" : "per-minute aggregates (AM)";
    renderHistoryCount();
    for (const [sym, view] of cards) view.card.setAttribute("aria-pressed", String(sym === chartSymbol));
    for (const b of document.querySelectorAll(".toggle button")) {
      b.setAttribute("aria-pressed", String(b.dataset.interval === chartEv));
    }
  }

  function switchChart(sym, ev) {
    const symbolChanged = sym !== chartSymbol;
    chartSymbol = sym;
    chartEv = ev || chartEv;
    chart.reset(chartEv === "A" ? 1000 : 60000);
    if (symbolChanged) {
      chartTrades.length = 0;
      series.A.clear();
      series.AM.clear();
      historyCount.A = historyCount.AM = null;
    }
    for (const candle of series[chartEv].values()) chart.addCandle(candle);
    for (const t of chartTrades) chart.addTrade(t.t, t.p);
    setChartTitle();
    renderLegend();
    if (symbolChanged) {
      syncSubscriptions();
      requestHistory();
    }
  }

  for (const b of document.querySelectorAll(".toggle button")) {
    b.addEventListener("click", () => switchChart(chartSymbol, b.dataset.interval));
  }

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

  // For tests and the curious: window.dashboard.client.attempts, .chart.tailDraws, ...
  window.dashboard = { client: client, chart: chart, spark: spark, quotes: quotes, option: option, contract: CONTRACT };
})();
