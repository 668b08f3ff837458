import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from "prom-client";
import type { PoolStats } from "./db/pool-stats.js";
import { GcMetric } from "./operability/gc-metric.js";

/** Distinct resource label values per replica (audiences are few; a caller looping over URIs must not grow the registry). */
const MAX_RESOURCE_LABELS = 100;

/** Where the metrics read their gauges from, at scrape time. */
export interface MetricSources {
  coalesced(): number;
  takeovers(): number;
  inflightRefreshes(): number;
  cacheEntries(): number;
  cacheHits(): number;
  cacheMisses(): number;
  /** Reads a full cache did not store (their session had not been read recently). */
  cacheDeclined(): number;
  serving(): boolean;
  /** Whether the database answered the service's last probe (see token_service_database_up). */
  databaseUp(): boolean;
  pools(): Record<"write" | "read", PoolStats>;
  /** WatchEvents streams open on this replica. */
  eventWatchers(): number;
}

/**
 * The service's Prometheus metrics, in a registry of their own (no global
 * state). Label values are method names, gRPC codes, provider ids and
 * outcomes: never a user id, a session id or anything secret.
 */
export class Metrics {
  readonly registry = new Registry();
  private readonly rpcTotal: Counter<"method" | "code">;
  private readonly rpcSeconds: Histogram<"method" | "code">;
  private readonly refreshTotal: Counter<"provider" | "result">;
  private readonly refreshSeconds: Histogram<"provider" | "result">;
  private readonly audienceTotal: Counter<"provider" | "resource" | "result">;
  private readonly audienceSeconds: Histogram<"provider" | "result">;
  /** Resources given their own label value so far; past MAX_RESOURCE_LABELS they count as "other". */
  private readonly resourceLabels = new Set<string>();
  private readonly providerSeconds: Histogram<"provider" | "endpoint" | "status">;
  private readonly backgroundTotal: Counter<"provider">;
  private readonly backgroundLag: Histogram<"provider">;
  private readonly gc: GcMetric;

  constructor(sources: MetricSources) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry });
    // Replaces prom-client's GC histogram, which misses collections under load.
    this.gc = new GcMetric(this.registry);
    this.rpcTotal = new Counter({
      name: "token_service_rpc_requests_total",
      help: "RPCs answered, by method and gRPC code.",
      labelNames: ["method", "code"],
      registers,
    });
    this.rpcSeconds = new Histogram({
      name: "token_service_rpc_duration_seconds",
      help: "RPC latency inside the service, by method and gRPC code.",
      labelNames: ["method", "code"],
      buckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.refreshTotal = new Counter({
      name: "token_service_refresh_total",
      help: "Refreshes at providers by this replica, by provider and result (success, reauth_required, unavailable, lease_lost).",
      labelNames: ["provider", "result"],
      registers,
    });
    this.refreshSeconds = new Histogram({
      name: "token_service_refresh_duration_seconds",
      help: "Time from taking a session's lease to storing its refreshed tokens (or failing).",
      labelNames: ["provider", "result"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.audienceTotal = new Counter({
      name: "token_service_audience_refresh_total",
      help: `Audience token (RFC 8707 resource) refreshes and exchanges at providers by this replica, by provider, resource and result (success, not_granted, reauth_required, unavailable); a resource is labelled once it got a token (at most ${MAX_RESOURCE_LABELS} per replica), "other" until then or past that.`,
      labelNames: ["provider", "resource", "result"],
      registers,
    });
    this.audienceSeconds = new Histogram({
      name: "token_service_audience_refresh_duration_seconds",
      help: "Time from taking a session's lease to storing an audience token (or failing).",
      labelNames: ["provider", "result"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
      registers,
    });
    this.providerSeconds = new Histogram({
      name: "token_service_provider_request_duration_seconds",
      help: "Every HTTP request to a provider, by provider, endpoint (token, revocation, discovery, registration, jwks, other) and HTTP status (\"error\": no answer, a network failure or a timeout).",
      labelNames: ["provider", "endpoint", "status"],
      buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10],
      registers,
    });
    this.backgroundTotal = new Counter({
      name: "token_service_background_refresh_total",
      help: "Background refreshes started by this replica, by provider.",
      labelNames: ["provider"],
      registers,
    });
    this.backgroundLag = new Histogram({
      name: "token_service_background_refresh_lag_seconds",
      help: "How late a background refresh started after its session became due (0: on time).",
      labelNames: ["provider"],
      buckets: [0, 0.5, 1, 2, 5, 10, 30, 60],
      registers,
    });
    new Counter({
      name: "token_service_singleflight_coalesced_total",
      help: "Callers that joined a refresh already in flight in this replica instead of starting one.",
      registers,
      collect() {
        this.reset();
        this.inc(sources.coalesced());
      },
    });
    new Counter({
      name: "token_service_lease_takeovers_total",
      help: "Refresh leases taken over from a replica whose lease had lapsed.",
      registers,
      collect() {
        this.reset();
        this.inc(sources.takeovers());
      },
    });
    new Gauge({
      name: "token_service_refreshes_inflight",
      help: "Sessions with a refresh in flight in this replica.",
      registers,
      collect() {
        this.set(sources.inflightRefreshes());
      },
    });
    new Gauge({
      name: "token_service_cache_entries",
      help: "Sessions in this replica's GetToken cache.",
      registers,
      collect() {
        this.set(sources.cacheEntries());
      },
    });
    new Counter({
      name: "token_service_cache_lookups_total",
      help: "GetToken cache lookups, by result.",
      labelNames: ["result"],
      registers,
      collect() {
        this.reset();
        this.inc({ result: "hit" }, sources.cacheHits());
        this.inc({ result: "miss" }, sources.cacheMisses());
      },
    });
    new Counter({
      name: "token_service_cache_declined_total",
      help: "Sessions read from the database that the full GetToken cache did not store, because they had not been read recently.",
      registers,
      collect() {
        this.reset();
        this.inc(sources.cacheDeclined());
      },
    });
    new Gauge({
      name: "token_service_event_watchers",
      help: "WatchEvents streams open on this replica (at most events.max_watchers).",
      registers,
      collect() {
        this.set(sources.eventWatchers());
      },
    });
    new Gauge({
      name: "token_service_serving",
      help: "1 while the gRPC health status is SERVING, 0 otherwise.",
      registers,
      collect() {
        this.set(sources.serving() ? 1 : 0);
      },
    });
    new Gauge({
      name: "token_service_database_up",
      help: "1 while the database answers this replica's probe (select 1, every 2 s); 0 once a probe failed, or while one has waited over 5 s. The same probe turns gRPC health NOT_SERVING.",
      registers,
      collect() {
        this.set(sources.databaseUp() ? 1 : 0);
      },
    });
    new Gauge({
      name: "token_service_db_pool_connections",
      help: "Database connections by pool (write: ORM; read: GetToken) and state (used, idle, waiting callers).",
      labelNames: ["pool", "state"],
      registers,
      collect() {
        for (const [pool, s] of Object.entries(sources.pools())) {
          this.set({ pool, state: "used" }, s.used);
          this.set({ pool, state: "idle" }, s.idle);
          this.set({ pool, state: "waiting" }, s.waiting);
        }
      },
    });
  }

  /**
   * The RPC counter and histogram children by method, then code: bound once,
   * so that a call does not build a label object and a label key twice.
   * Methods and codes are a closed set (the served RPCs and the gRPC codes).
   */
  private readonly rpcChildren = new Map<string, Map<string, { total: Counter.Internal; seconds: Histogram.Internal<"method" | "code"> }>>();

  rpc(method: string, code: string, ms: number): void {
    let byCode = this.rpcChildren.get(method);
    if (!byCode) this.rpcChildren.set(method, (byCode = new Map()));
    let child = byCode.get(code);
    if (!child) byCode.set(code, (child = { total: this.rpcTotal.labels(method, code), seconds: this.rpcSeconds.labels(method, code) }));
    child.total.inc();
    child.seconds.observe(ms / 1000);
  }

  refresh(provider: string, result: string, ms: number): void {
    this.refreshTotal.inc({ provider, result });
    this.refreshSeconds.observe({ provider, result }, ms / 1000);
  }

  audienceRefresh(provider: string, resource: string, result: string, ms: number): void {
    // Only a resource that got a token takes a label slot: refusals of arbitrary URIs cannot use them up.
    if (result === "success" && !this.resourceLabels.has(resource) && this.resourceLabels.size < MAX_RESOURCE_LABELS) this.resourceLabels.add(resource);
    this.audienceTotal.inc({ provider, resource: this.resourceLabels.has(resource) ? resource : "other", result });
    this.audienceSeconds.observe({ provider, result }, ms / 1000);
  }

  /** One HTTP request to a provider: `status` is the HTTP status, or "error" when no answer came. */
  providerRequest(provider: string, endpoint: string, status: string, seconds: number): void {
    this.providerSeconds.observe({ provider, endpoint, status }, seconds);
  }

  backgroundStarted(provider: string, lagSeconds: number): void {
    this.backgroundTotal.inc({ provider });
    this.backgroundLag.observe({ provider }, lagSeconds);
  }

  /** Stops observing collections (the registry keeps what was counted). */
  close(): void {
    this.gc.close();
  }
}
