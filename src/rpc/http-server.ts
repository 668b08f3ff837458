import { once } from "node:events";
import http from "node:http";
import http2 from "node:http2";
import type { AddressInfo, Socket } from "node:net";
import type { TlsConfig } from "../config.js";
import { SlotSet } from "../util/slot-set.js";
import { adoptStreamTables } from "./http2-streams.js";

type Handler = (req: http.IncomingMessage | http2.Http2ServerRequest, res: http.ServerResponse | http2.Http2ServerResponse) => void;

/** The HTTP listener: Connect (JSON and binary) and gRPC-Web, served by connect-node. */
export interface HttpListener {
  readonly server: http.Server | http2.Http2SecureServer;
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  /** Stops accepting connections; idle ones close now, busy ones after their response. */
  shutdown(): Promise<void>;
  /** Closes every connection now. */
  forceClose(): void;
  /**
   * New certificate, key and client CA for connections accepted from now on
   * (a reload); open connections keep theirs. Throws, changing nothing, on
   * material that does not make a TLS context. No-op in clear text.
   */
  setCertificates(tls: TlsConfig): void;
}

/**
 * How long an idle HTTP/1.1 keep-alive connection stays open: longer than
 * the 60 s idle timeout common in load balancers, so that the balancer, not
 * the service, closes it (a race between the two loses requests).
 */
const KEEP_ALIVE_MS = 65_000;

/** TCP keepalive probes on idle connections start after this long. */
const TCP_KEEPALIVE_MS = 60_000;

/**
 * Listens on host:port (port 0 picks a free one). In clear text it speaks
 * HTTP/1.1, so plain curl works; with `tls` it offers HTTP/2 and HTTP/1.1 by
 * ALPN and asks for (without requiring) client certificates when a client CA
 * is configured: only a certificate the CA verified identifies a caller.
 */
export async function startHttpServer(handler: Handler, host: string, port: number, tls: TlsConfig | undefined): Promise<HttpListener> {
  const sockets = new Set<Socket>();
  /** HTTP/1.1 responses not yet finished: a drain tells their connections to close after them (a SlotSet: one per request). */
  const pending = new SlotSet<http.ServerResponse>();
  let draining = false;
  const closeAfter = (res: http.ServerResponse) => {
    if (!res.headersSent) res.setHeader("connection", "close");
  };
  const onRequest: Handler = (req, res) => {
    if (req.httpVersionMajor === 1) {
      const r = res as http.ServerResponse;
      // While draining, an HTTP/1.1 connection closes after its response instead of waiting for more.
      if (draining) closeAfter(r);
      const slot = pending.add(r);
      r.once("close", () => pending.delete(slot, r));
    }
    handler(req, res);
  };
  const contextOf = (t: TlsConfig) => ({ cert: t.cert, key: t.key, ca: t.clientCa, minVersion: "TLSv1.2" as const });
  const server = tls
    ? http2.createSecureServer(
        {
          ...contextOf(tls),
          requestCert: tls.clientCa !== undefined,
          rejectUnauthorized: false,
          allowHTTP1: true,
        },
        onRequest,
      )
    : http.createServer({ keepAliveTimeout: KEEP_ALIVE_MS }, onRequest);
  server.on("connection", (socket: Socket) => {
    sockets.add(socket);
    socket.once("close", () => sockets.delete(socket));
    // A client that vanished (power loss, a dropped NAT entry) must not keep its connection forever.
    socket.setKeepAlive(true, TCP_KEEPALIVE_MS);
  });
  const sessions = new Set<http2.ServerHttp2Session>();
  if (tls) adoptStreamTables(server); // HTTP/2 (with HTTP/1.1 beside it) only over TLS
  server.on("session", (session: http2.ServerHttp2Session) => {
    // A connection whose TLS handshake ends after the drain began gets its GOAWAY at once.
    if (draining) return session.close();
    sessions.add(session);
    session.once("close", () => sessions.delete(session));
  });
  // Protocol garbage on a connection is that connection's problem only.
  server.on("clientError", (_err: Error, socket: Socket) => socket.destroy());
  server.on("sessionError", () => undefined);
  server.on("tlsClientError", () => undefined);
  server.listen(port, host);
  await once(server, "listening");
  const address = server.address() as AddressInfo;
  let closed: Promise<void> | undefined;
  return {
    server,
    host,
    port: address.port,
    tls: tls !== undefined,
    shutdown() {
      draining = true;
      for (const res of pending.values()) closeAfter(res);
      closed ??= new Promise<void>((resolve) => server.close(() => resolve()));
      if (server instanceof http.Server) server.closeIdleConnections();
      // HTTP/2: GOAWAY; streams in flight go on.
      for (const session of sessions) session.close();
      return closed;
    },
    forceClose() {
      for (const socket of sockets) socket.destroy();
    },
    setCertificates(next) {
      if (tls) (server as http2.Http2SecureServer).setSecureContext(contextOf(next));
    },
  };
}
