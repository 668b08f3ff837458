import { setTimeout as sleep } from "node:timers/promises";
import { startAdminServer, type AdminServer } from "../admin.js";
import type { Authorization } from "../authorization/wiring.js";
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { Sessions } from "../sessions/create-sessions.js";
import type { Spans } from "../tracing/spans.js";
import { CallerDirectory } from "./auth.js";
import { createBackchannelRoute } from "./backchannel-route.js";
import { createClientMetadataRoute } from "./client-metadata-route.js";
import { RpcChain } from "./chain.js";
import type { GrpcListener } from "./grpc-server.js";
import type { HealthState } from "./health.js";
import type { HttpListener } from "./http-server.js";
import { startListeners } from "./listeners.js";
import type { EventWatchers } from "../events/watchers.js";
import { createEventServiceHandlers } from "./event-service.js";
import { createProviderServiceHandlers } from "./provider-service.js";
import { createTokenServiceHandlers } from "./token-service.js";

/** The listening service: gRPC, Connect and gRPC-Web over one chain, and the admin listener. */
export interface Listeners {
  /** The shared RPC chain (calls in flight on both listeners). */
  readonly chain: RpcChain;
  readonly grpc: GrpcListener;
  readonly http: HttpListener | undefined;
  readonly admin: AdminServer | undefined;
  /**
   * Graceful stop: NOT_SERVING, no new connections, calls in flight go on
   * until they finish or config.shutdownGraceMs ends; then the rest are cut
   * off with an answer and the admin listener closes.
   */
  close(): Promise<void>;
}

/** The first of these routes that takes the request. */
function anyOf<A extends unknown[]>(...routes: Array<(...args: A) => boolean>): (...args: A) => boolean {
  return (...args) => routes.some((route) => route(...args));
}

/** host:port, with an IPv6 host in brackets. */
export function addressOf(l: { host: string; port: number }): string {
  return `${l.host.includes(":") ? `[${l.host}]` : l.host}:${l.port}`;
}

/** http(s)://host:port of a listener. */
export function urlOf(l: { tls: boolean; host: string; port: number }): string {
  return `${l.tls ? "https" : "http"}://${addressOf(l)}`;
}

/** Starts the RPC listeners over the domain and then, when on, the admin listener. On failure, what was started is closed. */
export async function createListeners(
  config: Config,
  deps: {
    sessions: Sessions;
    authorization: Authorization;
    watchers: EventWatchers;
    health: HealthState;
    metrics: Metrics;
    logger: Logger;
    spans: Spans;
  },
): Promise<Listeners> {
  const { sessions, authorization, health, metrics, logger } = deps;
  const chain = new RpcChain(new CallerDirectory(config.callers, config.userAssertion), logger, (e) => metrics.rpc(e.method, e.code, e.ms), deps.spans);
  const { grpc, http } = await startListeners({
    config,
    chain,
    health,
    tokenService: createTokenServiceHandlers(sessions.service, sessions.users, authorization.codeFlow),
    providerService: createProviderServiceHandlers(authorization.admin),
    eventService: createEventServiceHandlers(deps.watchers),
    httpRoute: anyOf(
      createClientMetadataRoute(authorization.clientDocument, () => authorization.signingKeys?.published()),
      createBackchannelRoute(authorization.logout, logger),
    ),
  });
  let admin: AdminServer | undefined;
  try {
    admin = config.admin ? await startAdminServer(config.admin.host, config.admin.port, metrics, health) : undefined;
  } catch (err) {
    grpc.forceClose();
    http?.forceClose();
    throw err;
  }
  return {
    chain,
    grpc,
    http,
    admin,
    async close() {
      health.setDraining();
      logger.info({ inflight: chain.inflightCount, graceMs: config.shutdownGraceMs }, "shutting down: draining calls");
      // Watchers have been told NOT_SERVING; their streams end so that they do not hold the drain up.
      grpc.endStreams();
      // WatchEvents streams end with UNAVAILABLE (SHUTTING_DOWN): their callers resume elsewhere with their cursor.
      deps.watchers.close();
      // No new connections; GOAWAY on the open ones. Calls in flight go on until they finish or the grace ends.
      const closed = Promise.all([grpc.shutdown(), http?.shutdown()]);
      const deadline = Date.now() + config.shutdownGraceMs;
      while (chain.inflightCount > 0 && Date.now() < deadline) await sleep(20);
      if (chain.inflightCount > 0) {
        logger.warn({ inflight: chain.inflightCount }, "shutdown grace period over: cutting off the calls still in flight");
        chain.cutOff();
      }
      // The last answers go out, then each connection closes by itself; what is still open after that is closed.
      await Promise.race([closed, sleep(Math.max(250, deadline - Date.now()))]);
      // Whatever is still open now is cut off with an answer, never just reset.
      chain.cutOff();
      await sleep(chain.inflightCount > 0 ? 50 : 0);
      grpc.forceClose();
      http?.forceClose();
      await admin?.close();
    },
  };
}
