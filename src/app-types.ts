import type { MikroORM } from "@mikro-orm/core";
import type { Authorization } from "./authorization/wiring.js";
import type { Config } from "./config.js";
import type { KeyRing } from "./crypto/key-ring.js";
import type { Logger } from "./logger.js";
import type { Metrics } from "./metrics.js";
import type { ResolveFn } from "./providers/outbound-policy.js";
import type { FetchLike } from "./providers/provider-client.js";
import type { BackgroundRefresher } from "./refresh/background.js";
import type { RefreshCoordinator } from "./refresh/coordinator.js";
import type { Sweeper } from "./refresh/sweeper.js";
import type { EventRepository } from "./db/event-repository.js";
import type { EventWatchers } from "./events/watchers.js";
import type { ReloadResult } from "./reload/reloader.js";
import type { RpcChain } from "./rpc/chain.js";
import type { GrpcListener } from "./rpc/grpc-server.js";
import type { HealthState } from "./rpc/health.js";
import type { HttpListener } from "./rpc/http-server.js";
import type { SessionCache } from "./sessions/session-cache.js";
import type { SessionService } from "./sessions/session-service.js";
import type { UserSessions } from "./sessions/user-sessions.js";
import type { Tracing } from "./tracing/setup.js";

/** Replaceable parts, for tests and embedding. */
export interface AppOverrides {
  logger?: Logger;
  /** fetch under the guarded one of every provider call (the outbound policy's dispatcher is passed in its init). */
  fetch?: FetchLike;
  /** How the outbound policy resolves names before it checks and pins them (tests: a fixed answer, DNS rebinding). */
  resolve?: ResolveFn;
  /** Replica id written into lease_owner. */
  replicaId?: string;
  /** Tracing (from the OTEL_* variables in `serve`); off when absent. Shut down by close(). */
  tracing?: Tracing;
  /** Reads and validates the configuration again, as start-up did: what App.reload() applies. Without it nothing reloads. */
  loadConfig?: () => Config;
}

/** A running service. */
export interface App {
  /** The configuration in effect (a reload replaces its reloadable parts). */
  readonly config: Config;
  readonly logger: Logger;
  /** The gRPC listener (grpc-js). */
  readonly grpc: GrpcListener;
  /** The HTTP listener for Connect and gRPC-Web (connect-node), when on. */
  readonly http: HttpListener | undefined;
  /** The shared RPC chain (calls in flight on both listeners). */
  readonly chain: RpcChain;
  /** Runtime providers, the authorization code flow, back-channel logout. */
  readonly authorization: Authorization;
  /** http(s)://host:port of the gRPC listener. */
  readonly url: string;
  /** http(s)://host:port of the HTTP listener, when on. */
  readonly httpUrl: string | undefined;
  readonly orm: MikroORM;
  readonly sessions: SessionService;
  readonly users: UserSessions;
  readonly coordinator: RefreshCoordinator;
  readonly background: BackgroundRefresher;
  readonly sweeper: Sweeper;
  /** The event outbox (docs/connection-health.md#events). */
  readonly events: EventRepository;
  /** This replica's WatchEvents streams. */
  readonly watchers: EventWatchers;
  readonly keyRing: KeyRing;
  readonly cache: SessionCache;
  readonly health: HealthState;
  readonly metrics: Metrics;
  /** Port of the admin listener, when on. */
  readonly adminPort: number | undefined;
  /**
   * Re-reads the configuration (callers, rate limits, YAML providers, log
   * level, certificates) and applies it; a bad one changes nothing and is
   * logged. Also runs by itself when the configuration's files change.
   */
  reload(trigger?: string): Promise<ReloadResult>;
  /** Graceful stop: drain calls (bounded by config.shutdownGraceMs), close the database. */
  close(): Promise<void>;
}
