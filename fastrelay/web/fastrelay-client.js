/*
 * fastrelay-client.js: a small browser client for fastrelay's /api/socket (Massive's protocol,
 * every market on one socket). Plain JavaScript, no dependencies, no build step.
 *
 *   const client = new FastRelayClient();            // ws(s)://<this page's host>/api/socket
 *   client.on("state", (state, info) => ...);        // connecting | live | reconnecting | stopped
 *   client.on("T", (trade) => ...);                  // events by their "ev"; "event" for all
 *   client.on("status", (status) => ...);            // every {"ev":"status"} object
 *   client.on("reduced", (reduced) => ...);          // true: the relay conflates this slow link
 *   client.subscribe("T.AAPL,Q.AAPL");               // remembered; resent after every reconnect
 *   client.history("AM.AAPL", {timespan: "minute", multiplier: 5});  // bars, then a status
 *   client.start();
 *
 * Reconnects with capped exponential backoff and full jitter: the n-th retry in a row waits a
 * uniform random time in [0, min(cap, base * 2^n)] (0.5 s .. 30 s), and n resets only once a
 * connection has stayed live for `healthyAfter` (10 s), so a server that accepts and drops at
 * once never pulls it into a tight loop. auth_failed (close 1008) stops, saying why: retrying
 * cannot help. slow_consumer (close 1013) reconnects after an extra pause.
 */
(function (root) {
  "use strict";

  const CLOSE_POLICY_VIOLATION = 1008;
  const CLOSE_TRY_AGAIN_LATER = 1013;

  function pageParam(name) {
    try {
      return new URLSearchParams(root.location.search).get(name);
    } catch (_) {
      return null;
    }
  }

  function socketUrl(path) {
    const loc = root.location;
    return (loc.protocol === "https:" ? "wss://" : "ws://") + loc.host + path;
  }

  function splitChannels(params) {
    const list = Array.isArray(params) ? params : String(params).split(",");
    return list.map((c) => String(c).trim()).filter((c) => c.length > 0);
  }

  class FastRelayClient {
    constructor(options) {
      const o = options || {};
      this.url = o.url || socketUrl(o.path || "/api/socket");
      // The token: ?token=... on the page's URL, else the option, else a placeholder (a relay
      // in open mode accepts any token).
      this.token = pageParam("token") || o.token || "dashboard";
      this.backoffBase = o.backoffBase ?? 500; // ms
      this.backoffCap = o.backoffCap ?? 30000; // ms
      this.healthyAfter = o.healthyAfter ?? 10000; // ms live before the backoff resets
      this.slowConsumerPause = o.slowConsumerPause ?? 5000; // ms added after a slow_consumer close
      this.handshakeTimeout = o.handshakeTimeout ?? 10000; // ms from opening to authenticated
      this.random = o.random || Math.random;
      this.WebSocketImpl = o.WebSocket || root.WebSocket;

      this.channels = new Set(); // everything subscribed, in order, resent after reconnects
      this.handlers = new Map();
      this.state = "idle";
      this.reason = "";
      this.socket = null;
      this.running = false;
      // Counters (tests and the page read them).
      this.attempts = 0; // sockets opened since start
      this.retries = 0; // attempts in a row without a healthy connection: the backoff exponent
      this.lives = 0; // times the connection became live
      this.events = 0; // events received
      this.frames = 0;
      this.nextRetryAt = 0; // Date.now() of the scheduled reconnect, 0 if none
      this.lastClose = null; // {code, reason, clean}
      // The relay conflates this connection (a slow link): quotes and aggregates arrive as
      // their latest only, trades all, until it says caught_up (docs/protocol.md, "Conflation").
      this.reduced = false;
      this._retryTimer = null;
      this._healthyTimer = null;
      this._handshakeTimer = null;
      this._pendingPause = 0;
      this._fatal = "";
      this._onOnline = () => {
        // The network is back: do not sit out the rest of a long backoff delay.
        if (this.running && this.state === "reconnecting" && this._retryTimer !== null) {
          this._clearTimer("_retryTimer");
          this._open();
        }
      };
    }

    // --- events ---

    on(name, fn) {
      if (!this.handlers.has(name)) this.handlers.set(name, new Set());
      this.handlers.get(name).add(fn);
      return () => this.off(name, fn);
    }

    off(name, fn) {
      const set = this.handlers.get(name);
      if (set) set.delete(fn);
    }

    _emit(name, a, b) {
      const set = this.handlers.get(name);
      if (!set) return;
      for (const fn of set) {
        try {
          fn(a, b);
        } catch (err) {
          // One broken handler must not take the connection (or the other handlers) down.
          console.error("fastrelay-client: handler for", name, "failed:", err);
        }
      }
    }

    _setState(state, info) {
      this.state = state;
      this.reason = (info && info.reason) || "";
      this._emit("state", state, Object.assign({ attempts: this.attempts, retries: this.retries }, info));
    }

    // --- public API ---

    start() {
      if (this.running) return this;
      this.running = true;
      this._fatal = "";
      this.retries = 0;
      if (root.addEventListener) root.addEventListener("online", this._onOnline);
      this._open();
      return this;
    }

    stop(reason) {
      this.running = false;
      if (root.removeEventListener) root.removeEventListener("online", this._onOnline);
      this._clearTimer("_retryTimer");
      this._clearTimer("_healthyTimer");
      this._clearTimer("_handshakeTimer");
      this.nextRetryAt = 0;
      const socket = this.socket;
      this.socket = null;
      if (socket) {
        this._detach(socket);
        try {
          socket.close(1000, "client stopped");
        } catch (_) {
          /* already closed */
        }
      }
      this._setState("stopped", { reason: reason || "stopped" });
      return this;
    }

    subscribe(params) {
      const added = splitChannels(params).filter((c) => !this.channels.has(c));
      for (const c of added) this.channels.add(c);
      if (added.length && this.state === "live") this._send("subscribe", added);
      return this;
    }

    unsubscribe(params) {
      const removed = splitChannels(params).filter((c) => this.channels.has(c));
      for (const c of removed) this.channels.delete(c);
      if (removed.length && this.state === "live") this._send("unsubscribe", removed);
      return this;
    }

    /** fastrelay's history extension: the bars of these aggregate channels (oldest first, as
     * live events), then a "history: CHANNEL (N events)" status each. ``options`` chooses the
     * bars: {timespan, multiplier, from, to, limit} (docs/protocol.md); without them the relay
     * answers the last day of minute bars (AM) or the last hour of second bars (A). Sent only
     * while live; false otherwise. */
    history(params, options) {
      const list = splitChannels(params);
      if (!list.length || this.state !== "live") return false;
      this._send("history", list, options);
      return true;
    }

    // --- the connection ---

    _open() {
      this.nextRetryAt = 0;
      this.attempts += 1;
      this._setState(this.lives === 0 && this.retries === 0 ? "connecting" : "reconnecting", {
        reason: this.lives === 0 && this.retries === 0 ? "" : "connecting",
      });
      let socket;
      try {
        socket = new this.WebSocketImpl(this.url);
      } catch (err) {
        // A malformed URL or a blocked port: nothing will ever connect.
        this._stopFatal("cannot open " + this.url + ": " + err.message);
        return;
      }
      this.socket = socket;
      socket.onmessage = (msg) => this._onMessage(msg);
      socket.onclose = (ev) => this._onClose(socket, ev.code, ev.reason, ev.wasClean);
      socket.onerror = () => {
        /* onclose follows with the code */
      };
      this._handshakeTimer = setTimeout(() => {
        this._handshakeTimer = null;
        if (this.socket === socket && this.state !== "live") {
          // Stuck handshake (a black-holed proxy): give up on this socket and back off.
          try {
            socket.close();
          } catch (_) {
            /* ignore */
          }
          this._onClose(socket, 4000, "handshake timed out", false);
        }
      }, this.handshakeTimeout);
    }

    _send(action, list, extra) {
      const socket = this.socket;
      if (socket && socket.readyState === 1) {
        socket.send(JSON.stringify(Object.assign({}, extra, { action: action, params: list.join(",") })));
      }
    }

    _onMessage(msg) {
      let batch;
      try {
        batch = JSON.parse(msg.data);
      } catch (_) {
        console.warn("fastrelay-client: a frame that is not JSON");
        return;
      }
      if (!Array.isArray(batch)) batch = [batch];
      this.frames += 1;
      for (const item of batch) {
        if (!item || typeof item !== "object") continue;
        if (item.ev === "status") {
          this._onStatus(item);
          this._emit("status", item);
        } else {
          this.events += 1;
          this._emit(item.ev, item);
          this._emit("event", item);
        }
      }
    }

    _onStatus(status) {
      const kind = status.status;
      const message = status.message || "";
      // Older Massive servers answered connect and auth with "success": accept both forms.
      if (kind === "connected" || (kind === "success" && /^connected/i.test(message))) {
        this._send("auth", [this.token]);
      } else if (kind === "auth_success" || (kind === "success" && /^authenticated/i.test(message))) {
        this._becomeLive();
      } else if (kind === "auth_failed") {
        this._fatal = "authentication failed: check the token (?token=...)";
      } else if (kind === "slow_consumer") {
        this._pendingPause = this.slowConsumerPause;
      } else if (kind === "conflating" || kind === "caught_up") {
        this._setReduced(kind === "conflating");
      }
    }

    _setReduced(reduced) {
      if (this.reduced === reduced) return;
      this.reduced = reduced;
      this._emit("reduced", reduced);
    }

    _becomeLive() {
      if (this.state === "live") return;
      this._clearTimer("_handshakeTimer");
      this.lives += 1;
      if (this.channels.size) this._send("subscribe", Array.from(this.channels));
      this._healthyTimer = setTimeout(() => {
        this._healthyTimer = null;
        this.retries = 0; // stayed up: the next drop starts again at the base delay
      }, this.healthyAfter);
      this._setState("live", { reason: "" });
    }

    _onClose(socket, code, reason, clean) {
      if (socket !== this.socket) return; // a socket already given up on
      this._detach(socket);
      this.socket = null;
      this._setReduced(false); // a new connection starts with the full stream
      this._clearTimer("_healthyTimer");
      this._clearTimer("_handshakeTimer");
      this.lastClose = { code: code, reason: reason || "", clean: !!clean };
      if (!this.running) return;
      if (this._fatal || code === CLOSE_POLICY_VIOLATION) {
        this._stopFatal(this._fatal || "refused by the relay (1008" + (reason ? ": " + reason : "") + ")");
        return;
      }
      let why = "connection lost (" + code + (reason ? ": " + reason : "") + ")";
      let pause = this._pendingPause;
      this._pendingPause = 0;
      if (code === CLOSE_TRY_AGAIN_LATER) {
        why = "dropped as too slow (" + code + "): reconnecting after a pause";
        pause = pause || this.slowConsumerPause;
      }
      const ceiling = Math.min(this.backoffCap, this.backoffBase * Math.pow(2, Math.min(this.retries, 30)));
      const delay = Math.round(pause + this.random() * ceiling);
      this.retries += 1;
      this.nextRetryAt = Date.now() + delay;
      this._retryTimer = setTimeout(() => {
        this._retryTimer = null;
        if (this.running) this._open();
      }, delay);
      this._setState("reconnecting", { reason: why, delay: delay, code: code });
    }

    _stopFatal(reason) {
      this.running = false;
      if (root.removeEventListener) root.removeEventListener("online", this._onOnline);
      this._clearTimer("_retryTimer");
      this.nextRetryAt = 0;
      this._setState("stopped", { reason: reason, fatal: true });
    }

    _detach(socket) {
      socket.onmessage = null;
      socket.onclose = null;
      socket.onerror = null;
    }

    _clearTimer(name) {
      if (this[name] !== null) {
        clearTimeout(this[name]);
        this[name] = null;
      }
    }
  }

  root.FastRelayClient = FastRelayClient;
  if (typeof module === "object" && module.exports) module.exports = { FastRelayClient: FastRelayClient };
})(typeof window !== "undefined" ? window : globalThis);
