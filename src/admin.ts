import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import type { Metrics } from "./metrics.js";
import { ServingStatus, type HealthState } from "./rpc/health.js";

/** The admin listener: plain HTTP/1.1 for Prometheus and probes. */
export interface AdminServer {
  readonly port: number;
  close(): Promise<void>;
}

/**
 * Serves `/metrics` (Prometheus text format), `/healthz` (the process is up
 * and its event loop turns) and `/readyz` (200 only while the gRPC health
 * status is SERVING: database reachable, not draining).
 */
export async function startAdminServer(host: string, port: number, metrics: Metrics, health: HealthState): Promise<AdminServer> {
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") {
      res.writeHead(405, { allow: "GET, HEAD" }).end();
      return;
    }
    if (path === "/metrics") {
      metrics.registry.metrics().then(
        (text) => res.writeHead(200, { "content-type": metrics.registry.contentType }).end(text),
        () => res.writeHead(500, { "content-type": "text/plain" }).end("metrics failed\n"),
      );
      return;
    }
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    if (path === "/readyz") {
      const ready = health.status === ServingStatus.SERVING;
      res.writeHead(ready ? 200 : 503, { "content-type": "text/plain" }).end(`${ready ? "ready" : `not ready: ${health.reason}`}\n`);
      return;
    }
    res.writeHead(404, { "content-type": "text/plain" }).end("not found: try /metrics, /healthz or /readyz\n");
  });
  server.keepAliveTimeout = 5000;
  server.listen(port, host);
  await once(server, "listening");
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeAllConnections();
      }),
  };
}
