/**
 * The floor for the forwarding benchmark: a bare reverse proxy in its own
 * process, node:http in front of an undici Pool to `target`, the body
 * streamed both ways, a fixed bearer token added, no authentication, no
 * session, no log line, no metrics. Prints the port it listens on, then
 * serves until killed.
 *
 *   node --import tsx bench/bare-proxy.ts http://127.0.0.1:PORT
 */
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { pipeline } from "node:stream/promises";
import { Pool } from "undici";

const target = process.argv[2];
if (!target) {
  process.stderr.write("usage: bare-proxy.ts TARGET_URL\n");
  process.exit(2);
}
const pool = new Pool(target, { bodyTimeout: 0 });
const server = http.createServer((req, res) => {
  void (async () => {
    const headers: Record<string, string> = { authorization: "Bearer bare-proxy" };
    if (req.headers["content-type"]) headers["content-type"] = req.headers["content-type"];
    if (req.headers["content-length"]) headers["content-length"] = req.headers["content-length"];
    const up = await pool.request({ method: req.method as "POST", path: req.url ?? "/", headers, body: req });
    const out: Record<string, string | string[]> = {};
    for (const [k, v] of Object.entries(up.headers)) if (v !== undefined && k !== "connection" && k !== "keep-alive" && k !== "transfer-encoding") out[k] = v;
    res.writeHead(up.statusCode, out);
    await pipeline(up.body, res);
  })().catch(() => res.destroy());
});
server.listen(0, "127.0.0.1");
await once(server, "listening");
process.stdout.write(`${(server.address() as AddressInfo).port}\n`);
