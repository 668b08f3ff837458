import type { BackgroundConfig } from "../config.js";
import { headOf, type SessionRow } from "../db/session-entity.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, type Logger } from "../logger.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import { lifetimeSeconds, refreshMarginSeconds, secondsLeft } from "../sessions/expiry.js";
import type { RefreshCoordinator } from "./coordinator.js";
import { PeriodicTask } from "./periodic.js";
import { NO_SPANS, sessionAttributes, type Spans } from "../tracing/spans.js";

/** A failed background refresh of a session is not retried sooner than this. */
const ERROR_BACKOFF_MS = 10_000;

/** Counters for metrics and tests. */
export interface BackgroundStats {
  passes: number;
  started: number;
  /** Skipped because the provider's in-flight bound was reached. */
  throttled: number;
}

/**
 * Keeps recently used sessions fresh so GetToken rarely waits on a provider.
 * Every replica scans; the row lease makes sure exactly one of them calls the
 * provider for a session, and the others skip it without waiting.
 */
export class BackgroundRefresher {
  readonly stats: BackgroundStats = { passes: 0, started: 0, throttled: 0 };
  private readonly inflight = new Map<string, number>();
  private readonly running = new Set<Promise<unknown>>();
  private readonly task: PeriodicTask;

  constructor(
    private readonly repo: SessionRepository,
    private readonly coordinator: RefreshCoordinator,
    private readonly providers: ProviderRegistry,
    private readonly config: BackgroundConfig,
    private readonly logger: Logger,
    /** Told of each refresh it starts: the provider, and how late after the session became due (s). */
    private readonly onStart: (provider: string, lagSeconds: number) => void = () => undefined,
    private readonly spans: Spans = NO_SPANS,
  ) {
    this.task = new PeriodicTask("background refresh", config.intervalMs, () => this.pass(), logger);
  }

  start(): void {
    this.task.start();
  }

  /** Stops scanning and waits for the refreshes it started. */
  async stop(): Promise<void> {
    await this.task.stop();
    await Promise.allSettled([...this.running]);
  }

  /** How far ahead of expiry a session is refreshed: before the hot path's margin would make a caller wait. */
  aheadSeconds(row: SessionRow): number {
    const lifetime = lifetimeSeconds(row.accessIssuedAt, row.accessExpiresAt);
    const margin = refreshMarginSeconds(this.providers.get(row.provider)?.config.refreshMarginSeconds ?? 60, lifetime);
    const lead = margin + (2 * this.config.intervalMs) / 1000 + 1;
    return Math.min(lead, Math.floor(lifetime * 0.75));
  }

  /** One scan: start refreshes for the sessions that are due, within the per-provider bound. */
  async pass(): Promise<void> {
    this.stats.passes++;
    const now = new Date();
    const maxMargin = Math.max(60, ...this.providers.ids().map((id) => this.providers.get(id)!.config.refreshMarginSeconds));
    const horizon = new Date(now.getTime() + (maxMargin + (2 * this.config.intervalMs) / 1000 + 1) * 1000);
    const candidates = await this.repo.findRefreshCandidates(
      now,
      new Date(now.getTime() - this.config.recentWindowMs),
      horizon,
      this.config.batchSize,
      { providers: this.providers.ids(), failedBefore: new Date(now.getTime() - ERROR_BACKOFF_MS) },
    );
    for (const row of candidates) {
      const ahead = this.aheadSeconds(row);
      if (secondsLeft(row.accessExpiresAt, now) >= ahead) continue;
      const busy = this.inflight.get(row.provider) ?? 0;
      if (busy >= this.config.maxInflightPerProvider) {
        this.stats.throttled++;
        continue;
      }
      if (this.coordinator.isRefreshing(row.id)) continue;
      const lag = Math.max(0, ahead - secondsLeft(row.accessExpiresAt, now));
      // Each background refresh is a trace of its own, with the refresh (lease, provider request, store) inside.
      const started = this.spans.enabled
        ? this.spans.run("background refresh", undefined, { root: true, attributes: { ...sessionAttributes(row.id, row.provider), "token_service.lag_seconds": lag } }, (_span, ctx) =>
            this.coordinator.refreshIfIdle(headOf(row), ctx)!,
          )
        : this.coordinator.refreshIfIdle(headOf(row));
      if (!started) continue;
      this.stats.started++;
      this.onStart(row.provider, lag);
      this.inflight.set(row.provider, busy + 1);
      const done = started
        .then(
          () => undefined,
          (err: unknown) => this.logger.debug({ err: errSummary(err), provider: row.provider }, "background refresh failed"),
        )
        .finally(() => {
          this.inflight.set(row.provider, (this.inflight.get(row.provider) ?? 1) - 1);
          this.running.delete(done);
        });
      this.running.add(done);
    }
  }
}
