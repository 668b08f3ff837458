import type { Store } from "../db/create-store.js";
import type { EventWatchers } from "../events/watchers.js";
import { Metrics } from "../metrics.js";
import type { ProviderTelemetry } from "../providers/observed-fetch.js";
import type { RefreshCoordinator } from "../refresh/coordinator.js";
import { ServingStatus } from "../rpc/health.js";
import type { SessionCache } from "../sessions/session-cache.js";
import type { Spans } from "../tracing/spans.js";
import type { Health } from "./create-health.js";

/** The parts built after the metrics whose live values the gauges read. */
export interface MeteredParts {
  coordinator: RefreshCoordinator;
  cache: SessionCache;
  health: Health;
  watchers: EventWatchers;
}

/** The metrics, and what reports into them. */
export interface AppMetrics {
  readonly metrics: Metrics;
  /** Every provider request: a CLIENT span (tracing on) and the latency metric. */
  readonly telemetry: ProviderTelemetry;
  /** Points the gauges at the parts built since; nothing scrapes before start-up has done so. */
  watch(parts: MeteredParts): void;
}

/**
 * The metrics come before the parts that report into them (providers,
 * refresh, the RPC chain); their gauges read those parts' live values at
 * scrape time, once `watch` has named them.
 */
export function createMetrics(deps: { store: Store; spans: Spans }): AppMetrics {
  let live: MeteredParts | undefined;
  const metrics = new Metrics({
    coalesced: () => live?.coordinator.stats.coalesced ?? 0,
    takeovers: () => live?.coordinator.stats.takeovers ?? 0,
    inflightRefreshes: () => live?.coordinator.inflightCount ?? 0,
    cacheEntries: () => live?.cache.size ?? 0,
    cacheHits: () => live?.cache.stats.hits ?? 0,
    cacheMisses: () => live?.cache.stats.misses ?? 0,
    cacheDeclined: () => live?.cache.stats.declined ?? 0,
    serving: () => live?.health.state.status === ServingStatus.SERVING,
    databaseUp: () => live?.health.databaseUp() ?? false,
    pools: () => deps.store.pools(),
    eventWatchers: () => live?.watchers.count ?? 0,
  });
  return {
    metrics,
    telemetry: { spans: deps.spans, observe: (...a) => metrics.providerRequest(...a) },
    watch(parts) {
      live = parts;
    },
  };
}
