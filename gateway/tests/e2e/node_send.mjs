// Sends messages to a Xeno server through the real Segment Node.js SDK
// (@segment/analytics-node), as a customer's Node backend would.
//
//   node node_send.mjs --host http://127.0.0.1:PORT --write-key KEY --messages JSON
//
// JSON is a list of `{"type": "identify"|"track", "user_id", "anonymous_id",
// "traits", "event", "properties"}`. The SDK batches them to /v1/batch with
// Basic auth; the script waits for the flush and exits 1 if the SDK reported an
// error (the server refused a batch or could not be reached).
import { Analytics } from "@segment/analytics-node";

const args = Object.fromEntries(
  process.argv.slice(2).reduce((pairs, arg, i, all) => {
    if (arg.startsWith("--")) pairs.push([arg.slice(2), all[i + 1]]);
    return pairs;
  }, []),
);
const messages = JSON.parse(args.messages);
const errors = [];
const analytics = new Analytics({
  writeKey: args["write-key"],
  host: args.host,
  maxRetries: 2,
  flushInterval: 200,
  httpRequestTimeout: 10000,
});
analytics.on("error", (error) => errors.push(String(error?.reason ?? error?.message ?? error)));

for (const m of messages) {
  const ids = {};
  if (m.user_id) ids.userId = m.user_id;
  if (m.anonymous_id) ids.anonymousId = m.anonymous_id;
  if (m.type === "identify") analytics.identify({ ...ids, traits: m.traits ?? {} });
  else if (m.type === "track") analytics.track({ ...ids, event: m.event, properties: m.properties ?? {} });
  else {
    console.error(`node_send.mjs: unsupported message type ${m.type}`);
    process.exit(2);
  }
}
await analytics.closeAndFlush({ timeout: 15000 });
if (errors.length > 0) {
  for (const e of errors) console.error(`node_send.mjs: ${e}`);
  process.exit(1);
}
console.error(`node_send.mjs: sent ${messages.length} messages`);
