// Massive's official JavaScript client pointed at the relay, for the
// compatibility test: `node massive_client.mjs URL KEY CHANNELS COUNT`.
// Prints one JSON line: the statuses seen and the first COUNT events.
import { websocketClient } from "@massive.com/client-js";

const [url, key, channels, count] = process.argv.slice(2);
const wanted = Number(count);
const statuses = [];
const events = [];
const ws = websocketClient(key, url).stocks();

const finish = (code) => {
  console.log(JSON.stringify({ statuses, events }));
  ws.close();
  process.exit(code);
};
setTimeout(() => finish(1), 15000).unref();

ws.onmessage = ({ data }) => {
  for (const message of JSON.parse(data)) {
    if (message.ev === "status") {
      statuses.push(message.status);
      if (message.status === "auth_success") {
        ws.send(JSON.stringify({ action: "subscribe", params: channels }));
      }
    } else {
      events.push(message);
      if (events.length >= wanted) finish(0);
    }
  }
};
ws.onerror = (error) => {
  statuses.push(`socket error: ${error}`);
  finish(1);
};
