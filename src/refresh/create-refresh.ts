import type { Config } from "../config.js";
import type { Store } from "../db/create-store.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import type { TokenVault } from "../sessions/token-vault.js";
import type { Spans } from "../tracing/spans.js";
import { AudienceCoordinator } from "./audience.js";
import { BackgroundRefresher } from "./background.js";
import { RefreshCoordinator } from "./coordinator.js";
import { Sweeper } from "./sweeper.js";
import { SessionWaiter } from "./waiter.js";

/** The refresh engine: single flight per token row, refresh ahead of expiry, and the sweep of what is over. */
export interface Refresh {
  readonly waiter: SessionWaiter;
  readonly coordinator: RefreshCoordinator;
  readonly audiences: AudienceCoordinator;
  readonly background: BackgroundRefresher;
  readonly sweeper: Sweeper;
  /** Starts the background refresher and the sweeper, those that are on. */
  start(): void;
  /** Stops them, lets refreshes whose callers are gone store their tokens (bounded by the lease), then closes the waiter. */
  close(): Promise<void>;
}

/** The refresh engine over the store, reporting each refresh to `metrics`. */
export function createRefresh(
  config: Config,
  deps: { store: Store; vault: TokenVault; registry: ProviderRegistry; metrics: Metrics; logger: Logger; replicaId: string | undefined; spans: Spans },
): Refresh {
  const { store, vault, registry, metrics, logger, spans } = deps;
  const repo = store.sessions;
  const waiter = new SessionWaiter(store.channel);
  const coordinator = new RefreshCoordinator(repo, vault, registry, waiter, config.refresh, logger, deps.replicaId, spans);
  coordinator.onOutcome((e) => metrics.refresh(e.row.provider, e.outcome, e.ms));
  const audiences = new AudienceCoordinator(repo, store.audiences, vault, registry, coordinator, waiter, config.refresh, logger, spans);
  audiences.onOutcome((e) => metrics.audienceRefresh(e.provider, e.resource, e.outcome, e.ms));
  const background = new BackgroundRefresher(repo, coordinator, registry, config.refresh, logger, (provider, lag) =>
    metrics.backgroundStarted(provider, lag), spans,
  );
  const sweeper = new Sweeper(repo, config.sweeper, logger, () => waiter.notifyFlush(), store.authorizations, store.audiences, spans);
  return {
    waiter,
    coordinator,
    audiences,
    background,
    sweeper,
    start() {
      if (config.refresh.background.enabled) background.start();
      if (config.sweeper.enabled) sweeper.start();
    },
    async close() {
      await Promise.all([background.stop(), sweeper.stop()]);
      await Promise.all([coordinator.drain(config.refresh.leaseMs), audiences.drain(config.refresh.leaseMs)]);
      await waiter.close();
    },
  };
}
