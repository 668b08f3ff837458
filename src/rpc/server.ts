import { once } from "node:events";
import http2 from "node:http2";
import type { TlsConfig } from "../config.js";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";

/** The HTTP/2 listener that serves gRPC, gRPC-Web and Connect on one port. */
export interface RpcServer {
  readonly server: http2.Http2Server | http2.Http2SecureServer;
  readonly tls: boolean;
  readonly host: string;
  readonly port: number;
  /** Calls in flight right now. */
  inflight(): number;
  /**
   * Stops accepting connections, sends GOAWAY to every client, waits up to
   * `graceMs` for in-flight calls, then cuts the rest off.
   */
  close(graceMs: number, beforeCutoff?: () => void): Promise<void>;
}

type Handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => void;

/**
 * Listens on host:port (port 0 picks a free one): plain-text HTTP/2 (h2c), or
 * with `tls` HTTP/2 over TLS (HTTP/1.1 too, for gRPC-Web and Connect). A
 * client CA asks for client certificates without requiring them, so bearer
 * callers and mTLS callers share the port; a certificate the CA did not sign
 * identifies nobody.
 */
export async function startRpcServer(handler: Handler, host: string, port: number, tls?: TlsConfig): Promise<RpcServer> {
  const sessions = new Set<http2.ServerHttp2Session>();
  let inflight = 0;
  const onRequest = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    inflight++;
    let done = false;
    const finish = () => {
      if (!done) {
        done = true;
        inflight--;
      }
    };
    res.once("finish", finish);
    res.once("close", finish);
    handler(req, res);
  };
  const settings = { maxConcurrentStreams: 10_000 };
  const server = tls
    ? http2.createSecureServer(
        {
          cert: tls.cert,
          key: tls.key,
          ca: tls.clientCa,
          requestCert: tls.clientCa !== undefined,
          rejectUnauthorized: false,
          allowHTTP1: true,
          minVersion: "TLSv1.2",
          settings,
        },
        onRequest,
      )
    : http2.createServer({ settings }, onRequest);
  server.on("session", (session) => {
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
    // A client that vanishes must not keep a socket (and its memory) forever.
    session.setTimeout(120_000, () => session.close());
  });
  // Protocol garbage on a connection is that connection's problem only.
  server.on("sessionError", () => undefined);
  server.on("clientError", (_err, socket) => socket.destroy());
  server.on("tlsClientError", () => undefined);

  server.listen(port, host);
  await once(server, "listening");
  const address = server.address() as AddressInfo;

  return {
    server,
    tls: tls !== undefined,
    host,
    port: address.port,
    inflight: () => inflight,
    async close(graceMs, beforeCutoff) {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      for (const s of sessions) s.close();
      const deadline = Date.now() + graceMs;
      while (inflight > 0 && Date.now() < deadline) await sleep(20);
      if (inflight > 0) beforeCutoff?.();
      await sleep(inflight > 0 ? 50 : 0);
      for (const s of sessions) s.destroy();
      await closed;
    },
  };
}
