/**
 * The machine's limits for the hot-path benchmark, each in its own process:
 * `http2`, a bare node:http2 server that answers every request with an empty
 * gRPC message and grpc-status 0; `grpc-js`, a bare @grpc/grpc-js server
 * with grpc-health-check's Health service and nothing else, as configured
 * out of the box. Prints the port it listens on, then serves until killed.
 *
 *   node --import tsx bench/bare-servers.ts http2|grpc-js
 */
import { once } from "node:events";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import * as grpc from "@grpc/grpc-js";
import { HealthImplementation } from "grpc-health-check";

const EMPTY_MESSAGE = Buffer.alloc(5);

async function bareHttp2(): Promise<number> {
  const server = http2.createServer();
  server.on("stream", (stream) => {
    stream.on("data", () => undefined);
    stream.on("end", () => {
      stream.respond({ ":status": 200, "content-type": "application/grpc" }, { waitForTrailers: true });
      stream.on("wantTrailers", () => stream.sendTrailers({ "grpc-status": "0" }));
      stream.end(EMPTY_MESSAGE);
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

async function bareGrpcJs(): Promise<number> {
  const server = new grpc.Server();
  new HealthImplementation({ "": "SERVING" }).addToServer(server);
  return new Promise((resolve, reject) =>
    server.bindAsync("127.0.0.1:0", grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
  );
}

const kind = process.argv[2];
if (kind !== "http2" && kind !== "grpc-js") {
  process.stderr.write("usage: bare-servers.ts http2|grpc-js\n");
  process.exit(2);
}
const port = kind === "http2" ? await bareHttp2() : await bareGrpcJs();
// A clean exit on SIGTERM, so that --cpu-prof writes its profile.
process.on("SIGTERM", () => process.exit(0));
process.stdout.write(`${port}\n`);
