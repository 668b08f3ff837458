import { setTimeout as sleep } from "node:timers/promises";
import type { MikroORM } from "@mikro-orm/core";
import type { Config } from "./config.js";
import type { KeyRing } from "./crypto/key-ring.js";
import { resolveKeyRing } from "./crypto/resolve-key-ring.js";
import { describeDatabase, migrateUp, openOrm } from "./db/orm.js";
import { SessionRepository } from "./db/session-repository.js";
import { AuthorizationRepository } from "./db/provider-repository.js";
import { createLogger, errSummary, type Logger } from "./logger.js";
import { OidcProviderClient, ProviderRegistry, type FetchLike } from "./providers/provider-client.js";
import { RefreshCoordinator } from "./refresh/coordinator.js";
import { AudienceCoordinator } from "./refresh/audience.js";
import { AudienceTokenRepository } from "./db/audience-repository.js";
import { BackgroundRefresher } from "./refresh/background.js";
import { Sweeper } from "./refresh/sweeper.js";
import { SessionWaiter } from "./refresh/waiter.js";
import { PgChannel } from "./db/pg-channel.js";
import { ormPoolStats } from "./db/pool-stats.js";
import { Metrics } from "./metrics.js";
import { startAdminServer } from "./admin.js";
import { CallerDirectory } from "./rpc/auth.js";
import { RpcChain } from "./rpc/chain.js";
import { HealthState, ServingStatus } from "./rpc/health.js";
import type { GrpcListener } from "./rpc/grpc-server.js";
import type { HttpListener } from "./rpc/http-server.js";
import { startListeners } from "./rpc/listeners.js";
import { createProviderServiceHandlers } from "./rpc/provider-service.js";
import { createBackchannelRoute } from "./rpc/backchannel-route.js";
import { createAuthorization, type Authorization } from "./authorization/wiring.js";
import { createTokenServiceHandlers } from "./rpc/token-service.js";
import type { ProviderTelemetry } from "./providers/observed-fetch.js";
import { NO_SPANS } from "./tracing/spans.js";
import type { Tracing } from "./tracing/setup.js";
import { useNodeUtf8Encoder } from "./rpc/utf8.js";
import { PeriodicTask } from "./refresh/periodic.js";
import { openSessionReader } from "./db/session-reader.js";
import { SessionCache } from "./sessions/session-cache.js";
import { SessionService } from "./sessions/session-service.js";
import { ConfigReloader, type ReloadResult } from "./reload/reloader.js";
import { UserSessions } from "./sessions/user-sessions.js";
import { TokenVault } from "./sessions/token-vault.js";

export { resolveKeyRing } from "./crypto/resolve-key-ring.js";

/** Replaceable parts, for tests and embedding. */
export interface AppOverrides {
  logger?: Logger;
  /** fetch used for every provider call. */
  fetch?: FetchLike;
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

/**
 * Composition root: wires database, keys, providers, refresh engine and the
 * RPC server, then listens. Nothing starts on import.
 */
export async function createApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  useNodeUtf8Encoder();
  const keyRing = resolveKeyRing(config, logger);
  const orm = await openOrm(config.database);
  // What start-up has opened so far, closed in reverse if a later step fails.
  const opened: Array<() => Promise<unknown>> = [];
  try {
    const check = await orm.checkConnection();
    if (!check.ok) {
      throw new Error(`cannot reach the database (${describeDatabase(config.database)}): ${check.reason.split("\n")[0]}`);
    }
    const applied = await migrateUp(orm, config.database);
    const repo = new SessionRepository(orm, config.database.kind);
    const vault = new TokenVault(keyRing);
    const spans = overrides.tracing?.spans ?? NO_SPANS;
    // Every provider request: a CLIENT span (tracing on) and the latency metric (`metrics` exists by the first request).
    const telemetry: ProviderTelemetry = { spans, observe: (...a) => metrics.providerRequest(...a) };
    const providers = new ProviderRegistry(
      config.providers.map((p) => new OidcProviderClient(p, config.refresh, logger, overrides.fetch, telemetry)),
    );
    let channel: PgChannel | undefined;
    if (config.database.kind === "postgresql") {
      const ch = new PgChannel(config.database.url, logger, (channelName, message) => repo.notify(channelName, message));
      channel = ch;
      opened.push(() => ch.close());
      await ch.start();
    }
    const waiter = new SessionWaiter(channel);
    const coordinator = new RefreshCoordinator(repo, vault, providers, waiter, config.refresh, logger, overrides.replicaId, spans);
    // Metrics read live values at scrape time; `reader`, `cache` and `health` are assigned below.
    const metrics = new Metrics({
      coalesced: () => coordinator.stats.coalesced,
      takeovers: () => coordinator.stats.takeovers,
      inflightRefreshes: () => coordinator.inflightCount,
      cacheEntries: () => cache.size,
      cacheHits: () => cache.stats.hits,
      cacheMisses: () => cache.stats.misses,
      serving: () => health.status === ServingStatus.SERVING,
      // The probe below: its last answer, and down while one has waited over 5 s (a hung connection answers nothing).
      databaseUp: () => dbProbe.ok && (dbProbe.since === 0 || Date.now() - dbProbe.since < 5000),
      pools: () => ({ write: ormPoolStats(orm), read: reader.poolStats() }),
    });
    coordinator.onOutcome((e) => metrics.refresh(e.row.provider, e.outcome, e.ms));
    const audienceRepo = new AudienceTokenRepository(orm);
    const audiences = new AudienceCoordinator(repo, audienceRepo, vault, providers, coordinator, waiter, config.refresh, logger, spans);
    audiences.onOutcome((e) => metrics.audienceRefresh(e.provider, e.resource, e.outcome, e.ms));
    const background = new BackgroundRefresher(repo, coordinator, providers, config.refresh.background, logger, (provider, lag) =>
      metrics.backgroundStarted(provider, lag), spans,
    );
    const authRepo = new AuthorizationRepository(orm);
    const sweeper = new Sweeper(repo, config.sweeper, logger, () => waiter.notifyFlush(), authRepo, audienceRepo, spans);
    const reader = await openSessionReader(config.database);
    opened.push(() => reader.close());
    const cache = new SessionCache(config.cache, channel ? channel.connected : true);
    waiter.subscribe({
      changed: (ref) => cache.invalidateRef(ref),
      flush: () => cache.flush(),
      channel: (connected) => cache.setOnline(connected),
    });
    const sessions = new SessionService(repo, reader, cache, vault, providers, coordinator, audiences, logger, {
      lastUsedResolutionMs: config.lastUsedResolutionMs,
      spans,
    });

    const users = new UserSessions(repo, vault, providers, coordinator, audienceRepo, logger, {
      providerTimeoutMs: config.refresh.providerTimeoutMs,
    });
    // A login that needs renewing takes its audience tokens with it, whichever refresh found out.
    coordinator.onOutcome((e) => {
      if (e.outcome === "reauth_required") void users.dropAudienceTokens(e.row);
    });
    audiences.onOutcome((e) => {
      if (e.outcome === "reauth_required") void users.dropAudienceTokens({ id: e.sessionId, provider: e.provider });
    });
    const authorization = await createAuthorization({
      orm,
      config,
      keyRing,
      sessionsRepo: repo,
      authRepo,
      registry: providers,
      sessions,
      users,
      waiter,
      fetch: overrides.fetch,
      telemetry,
      logger,
    });
    const health = new HealthState();
    health.setDatabaseUp(true);
    // The database probe: NOT_SERVING while it fails, SERVING again when it answers.
    const dbProbe = { ok: true, since: 0 };
    const probe = new PeriodicTask(
      "database probe",
      2000,
      async () => {
        dbProbe.since = Date.now();
        try {
          await repo.ping().finally(() => (dbProbe.since = 0));
          dbProbe.ok = true;
          if (health.status !== ServingStatus.SERVING && health.reason === "database unreachable") {
            logger.info("database reachable again: SERVING");
          }
          health.setDatabaseUp(true);
        } catch {
          dbProbe.ok = false;
          if (health.reason !== "database unreachable" && health.reason !== "draining") {
            logger.warn("database unreachable: NOT_SERVING");
          }
          health.setDatabaseUp(false);
        }
      },
      logger,
    );

    const chain = new RpcChain(new CallerDirectory(config.callers), logger, (e) => metrics.rpc(e.method, e.code, e.ms), spans);
    const { grpc, http } = await startListeners({
      config,
      chain,
      health,
      tokenService: createTokenServiceHandlers(sessions, users, authorization.codeFlow),
      providerService: createProviderServiceHandlers(authorization.admin),
      httpRoute: createBackchannelRoute(authorization.logout, logger),
    });
    opened.push(async () => grpc.forceClose());
    if (http) opened.push(async () => http.forceClose());
    const reloader = new ConfigReloader(config, overrides.loadConfig, {
      logger,
      chain,
      registry: providers,
      makeProvider: (p) => new OidcProviderClient(p, config.refresh, logger, overrides.fetch, telemetry),
      certificates: grpc.certificates,
      http,
    });
    opened.push(async () => reloader.close());
    const admin = config.admin ? await startAdminServer(config.admin.host, config.admin.port, metrics, health) : undefined;
    probe.start();
    if (config.refresh.background.enabled) background.start();
    if (config.sweeper.enabled) sweeper.start();
    authorization.reloadTask.start();
    const urlOf = (l: { tls: boolean; host: string; port: number }) =>
      `${l.tls ? "https" : "http"}://${l.host.includes(":") ? `[${l.host}]` : l.host}:${l.port}`;
    const addrOf = (l: { host: string; port: number }) => `${l.host.includes(":") ? `[${l.host}]` : l.host}:${l.port}`;
    const url = urlOf(grpc);
    logger.info(
      {
        addr: addrOf(grpc),
        httpAddr: http ? addrOf(http) : "off",
        database: describeDatabase(config.database),
        migrationsApplied: applied,
        providers: providers.ids(),
        keyIds: keyRing.ids(),
        primaryKeyId: keyRing.primary.id,
        replica: coordinator.replicaId,
        changeChannel: channel ? (channel.connected ? "listening" : "reconnecting") : "none (single process)",
        backgroundRefresh: config.refresh.background.enabled,
        tls: config.tls ? (config.tls.clientCa ? "on, client certificates accepted" : "on") : "off",
        callers: config.callers.map((c) => c.name),
        reflection: config.reflection,
        admin: admin ? `${config.admin!.host}:${admin.port}` : "off",
        sweeper: config.sweeper.enabled,
      },
      "token service listening",
    );
    if (config.callers.length === 0) {
      logger.warn(
        { addr: addrOf(grpc), httpAddr: http ? addrOf(http) : "off" },
        "no callers configured: any local process may call every RPC; listening on loopback only",
      );
    }
    if (providers.ids().length === 0) {
      logger.warn("no providers configured (TOKEN_SERVICE_CONFIG): StoreSession will refuse every provider");
    }

    let closing: Promise<void> | undefined;
    return {
      get config() {
        return reloader.config;
      },
      logger,
      grpc,
      http,
      chain,
      authorization,
      url,
      httpUrl: http ? urlOf(http) : undefined,
      orm,
      sessions,
      users,
      coordinator,
      background,
      sweeper,
      keyRing,
      cache,
      health,
      metrics,
      adminPort: admin?.port,
      reload: (trigger = "reload") => reloader.reload(trigger),
      close() {
        closing ??= (async () => {
          reloader.close();
          health.setDraining();
          logger.info({ inflight: chain.inflightCount, graceMs: config.shutdownGraceMs }, "shutting down: draining calls");
          // Watchers have been told NOT_SERVING; their streams end so that they do not hold the drain up.
          grpc.endStreams();
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
          await Promise.all([background.stop(), sweeper.stop(), probe.stop(), authorization.reloadTask.stop(), admin?.close()]);
          // Refreshes whose callers are gone go on until their tokens are stored (bounded by the lease).
          await Promise.all([coordinator.drain(config.refresh.leaseMs), audiences.drain(config.refresh.leaseMs)]);
          await waiter.close();
          await reader.close();
          await orm.close(true);
          // The last spans (the drain's refreshes included) go to the collector.
          await overrides.tracing?.shutdown().catch((err: unknown) => logger.warn({ err: errSummary(err) }, "could not export the last spans"));
          logger.info("shut down");
          logger.flush();
        })();
        return closing;
      },
    };
  } catch (err) {
    for (const close of opened.reverse()) await close().catch(() => undefined);
    await orm.close(true).catch(() => undefined);
    throw err;
  }
}
