// Several of Massive's official JavaScript clients in one process, for the --workers test:
// `node massive_clients.mjs URL KEY CHANNELS COUNT CLIENTS`.
// Once every client has COUNT events it prints one JSON line (each client's statuses and
// events) and keeps its connections open until stdin ends, so the test can see where they
// are connected; then it closes them and exits 0. Exit 1 after 30 s without COUNT each.
import { websocketClient } from "@massive.com/client-js";

const [url, key, channels, count, clients] = process.argv.slice(2);
const wanted = Number(count);
const seen = [];
let printed = false;

setTimeout(() => {
  console.log(JSON.stringify({ clients: seen, timeout: true }));
  process.exit(1);
}, 30000).unref();

for (let index = 0; index < Number(clients); index++) {
  const mine = { statuses: [], events: [] };
  seen.push(mine);
  const ws = websocketClient(key, url).stocks();
  mine.ws = ws;
  ws.onmessage = ({ data }) => {
    for (const message of JSON.parse(data)) {
      if (message.ev === "status") {
        mine.statuses.push(message.status);
        if (message.status === "auth_success") {
          ws.send(JSON.stringify({ action: "subscribe", params: channels }));
        }
      } else if (mine.events.length < wanted) {
        mine.events.push(message);
      }
    }
    if (!printed && seen.length === Number(clients) && seen.every((c) => c.events.length >= wanted)) {
      printed = true;
      console.log(JSON.stringify({ clients: seen.map(({ statuses, events }) => ({ statuses, events })) }));
    }
  };
  ws.onerror = (error) => mine.statuses.push(`socket error: ${error}`);
}

process.stdin.on("data", () => {});
process.stdin.on("end", () => {
  for (const client of seen) client.ws.close();
  process.exit(printed ? 0 : 1);
});
