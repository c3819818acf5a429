// Peer relay on Node.js and the `ws` library: the original design's stack, a baseline for fastrelay.
//
// The same protocol and routing as fastrelay (and bench/peers/websockets_relay.py):
// - clients: `connected` on open, any `auth` succeeds, each subscribe/unsubscribe acknowledged per
//   channel with Massive's wording; paths /<market> only;
// - upstream: one `ws` connection to the simulator with the union of the clients' channels
//   (reference counted, unsubscribed when the last client leaves), resubscribed after a reconnect
//   that waits a random 0-0.5 s;
// - routing: clients grouped by channel set; per upstream frame, JSON.parse once, then per group
//   that wants some events one message: the upstream frame's Buffer as it came when the group
//   wants all of them (always so under T.* or single-event frames), else JSON.stringify of its
//   events; sent with the idiom of ws's documentation, `client.send(data, { binary: false })` to
//   every member (ws frames each send; the kernel gets one writev per send);
// - slow consumers: after a send, a client whose `bufferedAmount` is over 4 MiB is sent
//   `slow_consumer`, closed with 1013 and terminated 1 s later if it does not take the close.
// No coalescing over time: each upstream frame is forwarded when it arrives.
//
// node relay.mjs --port P --upstream ws://127.0.0.1:S --api-key K [--market stocks]

import http from "node:http";
import { parseArgs } from "node:util";
import { WebSocket, WebSocketServer } from "ws";

const MAX_CLIENT_BUFFER = 4 * 1024 * 1024;
const RECONNECT_BASE_MS = 500;
const CLOSE_GRACE_MS = 1000;

const { values: args } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    upstream: { type: "string" },
    "api-key": { type: "string" },
    market: { type: "string", default: "stocks" },
    // permessage-deflate with clients that offer it, with ws's defaults (per connection).
    deflate: { type: "boolean", default: false },
  },
});

const statusFrame = (status, message) => JSON.stringify([{ ev: "status", status, message }]);
const CONNECTED = statusFrame("connected", "Connected Successfully");
const AUTH_SUCCESS = statusFrame("auth_success", "authenticated");
const SLOW_CONSUMER = statusFrame("slow_consumer", "client too slow: unsent data over the limit");
const channelNames = (params) => [
  ...new Set(
    String(params)
      .split(",")
      .map((s) => s.trim())
      .filter((s) => /^[^.]+\..+$/.test(s)),
  ),
];
const acks = (names, verb) =>
  JSON.stringify(names.map((name) => ({ ev: "status", status: "success", message: `${verb} to: ${name}` })));

// --- routing table ---------------------------------------------------------------------------------
const groups = new Map(); // channel-set key -> group {key, channels, members}
const wildcard = new Map(); // ev -> groups with EV.*
const exact = new Map(); // "EV.TICKER" -> groups (not covered by their EV.*)
const groupOf = new Map(); // client -> group
const counts = new Map(); // upstream channel -> clients wanting it
let upstream = null;
let live = false;
let slowDrops = 0;

function indexGroup(group, add) {
  const wild = new Set([...group.channels].filter((n) => n.endsWith(".*")).map((n) => n.split(".")[0]));
  for (const name of group.channels) {
    const dot = name.indexOf(".");
    const ev = name.slice(0, dot);
    let table;
    let key;
    if (name.slice(dot + 1) === "*") [table, key] = [wildcard, ev];
    else if (!wild.has(ev)) [table, key] = [exact, name];
    else continue;
    if (add) {
      if (!table.has(key)) table.set(key, []);
      table.get(key).push(group);
    } else {
      const list = table.get(key);
      list.splice(list.indexOf(group), 1);
      if (!list.length) table.delete(key);
    }
  }
}

function move(client, channels) {
  const old = groupOf.get(client);
  if (old) {
    groupOf.delete(client);
    old.members.delete(client);
    if (!old.members.size) {
      groups.delete(old.key);
      indexGroup(old, false);
    }
  }
  if (!channels.size) return;
  const key = [...channels].sort().join(",");
  let group = groups.get(key);
  if (!group) {
    group = { key, channels, members: new Set() };
    groups.set(key, group);
    indexGroup(group, true);
  }
  group.members.add(client);
  groupOf.set(client, group);
}

function sendUpstream(action, names) {
  if (names.length && live && upstream) upstream.send(JSON.stringify({ action, params: names.join(",") }));
}

function subscribe(client, names) {
  const current = groupOf.get(client)?.channels ?? new Set();
  const added = names.filter((n) => !current.has(n));
  move(client, new Set([...current, ...added]));
  const fresh = [];
  for (const n of added) {
    const c = counts.get(n) ?? 0;
    counts.set(n, c + 1);
    if (!c) fresh.push(n);
  }
  sendUpstream("subscribe", fresh);
}

function release(names) {
  const gone = [];
  for (const n of names) {
    const c = (counts.get(n) ?? 0) - 1;
    if (c > 0) counts.set(n, c);
    else {
      counts.delete(n);
      gone.push(n);
    }
  }
  sendUpstream("unsubscribe", gone);
}

function unsubscribe(client, names) {
  const current = groupOf.get(client)?.channels ?? new Set();
  const removed = names.filter((n) => current.has(n));
  move(client, new Set([...current].filter((n) => !removed.includes(n))));
  release(removed);
}

function leave(client) {
  const group = groupOf.get(client);
  if (!group) return;
  move(client, new Set());
  release([...group.channels]);
}

function dropSlowConsumer(client) {
  leave(client);
  slowDrops += 1;
  client.send(SLOW_CONSUMER);
  client.close(1013, "slow consumer");
  setTimeout(() => client.terminate(), CLOSE_GRACE_MS).unref();
}

// --- the hot path --------------------------------------------------------------------------------------
function route(data) {
  const events = JSON.parse(data);
  if (!Array.isArray(events)) return;
  const picked = new Map();
  const pick = (list, event) => {
    for (const group of list) {
      const chosen = picked.get(group);
      if (chosen) chosen.push(event);
      else picked.set(group, [event]);
    }
  };
  for (const event of events) {
    const ev = event.ev;
    const wild = wildcard.get(ev);
    if (wild) pick(wild, event);
    if (exact.size) {
      const list = exact.get(`${ev}.${event.sym}`);
      if (list) pick(list, event);
    }
  }
  const slow = [];
  for (const [group, chosen] of picked) {
    const message = chosen.length === events.length ? data : JSON.stringify(chosen);
    for (const client of group.members) {
      client.send(message, { binary: false });
      if (client.bufferedAmount > MAX_CLIENT_BUFFER) slow.push(client);
    }
  }
  for (const client of slow) dropSlowConsumer(client);
}

// --- upstream ------------------------------------------------------------------------------------------
function connectUpstream() {
  const url = `${args.upstream.replace(/\/$/, "")}/${args.market}`;
  const ws = new WebSocket(url, { perMessageDeflate: false, maxPayload: 0 });
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    if (live) {
      route(data);
      return;
    }
    for (const event of JSON.parse(data)) {
      if (event.status === "connected") ws.send(JSON.stringify({ action: "auth", params: args["api-key"] }));
      else if (event.status === "auth_success") {
        live = true;
        upstream = ws;
        if (counts.size) ws.send(JSON.stringify({ action: "subscribe", params: [...counts.keys()].join(",") }));
      } else if (event.status === "auth_failed" || event.status === "max_connections") ws.terminate();
    }
  });
  ws.on("error", () => {});
  ws.on("close", () => {
    live = false;
    upstream = null;
    setTimeout(connectUpstream, Math.random() * RECONNECT_BASE_MS);
  });
}

// --- clients -----------------------------------------------------------------------------------------
const server = http.createServer((req, res) => {
  const path = req.url.split("?")[0];
  if (path === "/readyz") {
    res.writeHead(live ? 200 : 503).end(live ? "ready\n" : "upstream down\n");
  } else if (path === "/healthz") {
    res.writeHead(200).end("ok\n");
  } else if (path === "/stats") {
    res.writeHead(200, { "Content-Type": "application/json" });
    res.end(JSON.stringify({ clients: groupOf.size, slow_consumer_drops: slowDrops }));
  } else {
    res.writeHead(404).end();
  }
});
const wss = new WebSocketServer({ noServer: true, perMessageDeflate: args.deflate, maxPayload: 256 * 1024 });
server.on("upgrade", (req, socket, head) => {
  if (req.url.split("?")[0].replace(/\/$/, "") !== `/${args.market}`) {
    socket.destroy();
    return;
  }
  wss.handleUpgrade(req, socket, head, (client) => {
    client.send(CONNECTED);
    client.on("message", (raw, isBinary) => {
      let message;
      try {
        message = JSON.parse(raw);
      } catch {
        client.send(statusFrame("error", "invalid message"));
        return;
      }
      const action = message?.action;
      if (action === "auth") client.send(AUTH_SUCCESS);
      else if (action === "subscribe" || action === "unsubscribe") {
        const names = channelNames(message.params ?? "");
        if (action === "subscribe") subscribe(client, names);
        else unsubscribe(client, names);
        client.send(acks(names, `${action}d`));
      }
    });
    client.on("error", () => {});
    client.on("close", () => leave(client));
  });
});
server.listen(Number(args.port), args.host, connectUpstream);
const stop = () => process.exit(0);
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
