import { randomBytes } from "node:crypto";
import type { RefreshConfig } from "../config.js";
import type { SessionRow } from "../db/session-entity.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, type Logger } from "../logger.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import type { RefreshCoordinator } from "./coordinator.js";
import { PeriodicTask } from "./periodic.js";
import { NO_SPANS, sessionAttributes, type Spans } from "../tracing/spans.js";

/** A failed background refresh of a session is not retried sooner than this. */
const ERROR_BACKOFF_MS = 10_000;

/**
 * After refreshes finish while more sessions were due, claim again this soon:
 * one claim for the refreshes that finish together, and a freed slot idle
 * for no longer than this (at 200 ms per provider call, 100 ms here cost a
 * quarter of the cap).
 */
const REFILL_DELAY_MS = 15;

/**
 * A claim that found the cluster's cap full, from a replica with none of the
 * provider's refreshes in flight (so none of its own will finish and claim
 * again): it looks again after about this long (jittered), not at the next pass.
 */
const CLUSTER_FULL_RETRY_MS = 150;

/** Counters for metrics and tests. */
export interface BackgroundStats {
  passes: number;
  started: number;
  /** Claims skipped because this replica's in-flight bound for the provider was reached. */
  throttled: number;
  /** Batch claims made (each one transaction: the live leases counted, then one UPDATE that claims). */
  claims: number;
}

/**
 * Keeps sessions fresh: recently used ones ahead of expiry, so GetToken
 * rarely waits on a provider, and every one within `keep_alive_seconds`, so
 * a refresh token that dies of disuse does not. Each replica claims due
 * sessions in batches (one statement, which takes their leases); the claim
 * keeps a provider's live leases over all replicas within
 * `cluster_max_inflight_per_provider`, and this replica's own in-flight ones
 * within `max_inflight_per_provider`. When refreshes finish while more
 * sessions were due, it claims again at once instead of waiting for the
 * next pass.
 */
export class BackgroundRefresher {
  readonly stats: BackgroundStats = { passes: 0, started: 0, throttled: 0, claims: 0 };
  private readonly inflight = new Map<string, number>();
  private readonly running = new Set<Promise<unknown>>();
  /** Providers with a claim under way here, and those whose last claim found more due than it took. */
  private readonly claiming = new Map<string, Promise<void>>();
  private readonly backlog = new Set<string>();
  /** Providers asked to claim while a claim was under way: claimed again as soon as it ends. */
  private readonly again = new Set<string>();
  private readonly refills = new Map<string, NodeJS.Timeout>();
  private readonly task: PeriodicTask;
  private stopped = true;

  constructor(
    private readonly repo: SessionRepository,
    private readonly coordinator: RefreshCoordinator,
    private readonly providers: ProviderRegistry,
    private readonly config: RefreshConfig,
    private readonly logger: Logger,
    /** Told of each refresh it starts: the provider, and how late after the session became due (s). */
    private readonly onStart: (provider: string, lagSeconds: number) => void = () => undefined,
    private readonly spans: Spans = NO_SPANS,
  ) {
    this.task = new PeriodicTask("background refresh", config.background.intervalMs, () => this.pass(), logger);
  }

  start(): void {
    this.stopped = false;
    this.task.start();
  }

  /** Stops claiming and waits for the refreshes it started. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.refills.values()) clearTimeout(t);
    this.refills.clear();
    await this.task.stop();
    await Promise.allSettled([...this.claiming.values()]);
    await Promise.allSettled([...this.running]);
  }

  /** One pass: a claim per configured provider. */
  async pass(): Promise<void> {
    this.stats.passes++;
    await Promise.all(this.providers.ids().map((id) => this.fill(id)));
  }

  /** Claims what is due at `provider` within both bounds and starts refreshing it; one claim at a time per provider. */
  private fill(provider: string): Promise<void> {
    const current = this.claiming.get(provider);
    if (current) {
      // Slots freed while this claim ran are claimed right after it, not at the next pass.
      this.again.add(provider);
      return current;
    }
    const p = this.claim(provider).finally(() => {
      this.claiming.delete(provider);
      if (this.again.delete(provider) && this.backlog.has(provider)) this.scheduleRefill(provider, REFILL_DELAY_MS);
    });
    this.claiming.set(provider, p);
    return p;
  }

  private async claim(provider: string): Promise<void> {
    const { background } = this.config;
    const free = background.maxInflightPerProvider - (this.inflight.get(provider) ?? 0);
    if (free <= 0) {
      this.stats.throttled++;
      return;
    }
    const limit = Math.min(free, background.batchSize);
    const now = new Date();
    const until = new Date(now.getTime() + this.config.leaseMs);
    const owner = `${this.coordinator.replicaId}:${randomBytes(4).toString("hex")}`;
    const margin = this.providers.get(provider)?.config.refreshMarginSeconds ?? 60;
    const { keepAliveMs, absoluteLifetimeMs } = this.config;
    this.stats.claims++;
    const { rows, more } = await this.repo.claimDue({
      provider,
      now,
      owner,
      until,
      limit,
      clusterLimit: background.clusterMaxInflightPerProvider,
      usedSince: new Date(now.getTime() - background.recentWindowMs),
      horizon: new Date(now.getTime() + this.coordinator.schedule.leadSeconds(margin) * 1000),
      failedBefore: new Date(now.getTime() - ERROR_BACKOFF_MS),
      keepAliveIssuedBefore: keepAliveMs > 0 ? new Date(now.getTime() - keepAliveMs) : null,
      createdAfter: absoluteLifetimeMs > 0 ? new Date(now.getTime() - absoluteLifetimeMs) : null,
    });
    // A claim that took all it was allowed may have left sessions due: claim again as soon as some
    // finish. One that found fewer waits for the next pass.
    if (more) this.backlog.add(provider);
    else this.backlog.delete(provider);
    for (const row of rows) this.begin(row, owner, until, now);
    // The cluster's cap was full and nothing of ours is in flight to claim again when it ends: look again soon.
    if (more && rows.length === 0 && (this.inflight.get(provider) ?? 0) === 0) {
      this.scheduleRefill(provider, CLUSTER_FULL_RETRY_MS * (0.5 + Math.random()));
    }
  }

  /** How late the refresh of `row` starts after it became due, in seconds (0: on time). */
  private lagSeconds(row: SessionRow, now: Date): number {
    const refreshAt = row.refreshAt ?? new Date(row.accessExpiresAt.getTime() - this.coordinator.schedule.aheadSeconds(row) * 1000);
    const used = row.lastUsedAt.getTime() >= now.getTime() - this.config.background.recentWindowMs;
    const dues = [used ? refreshAt.getTime() : Infinity, row.keepAliveAt?.getTime() ?? row.accessIssuedAt.getTime() + this.config.keepAliveMs];
    return Math.max(0, (now.getTime() - Math.min(...dues)) / 1000);
  }

  private begin(row: SessionRow, owner: string, until: Date, now: Date): void {
    const lag = this.lagSeconds(row, now);
    // Each background refresh is a trace of its own, with the refresh (provider request, store) inside.
    const started = this.spans.enabled
      ? this.spans.run(
          "background refresh",
          undefined,
          { root: true, attributes: { ...sessionAttributes(row.id, row.provider), "token_service.lag_seconds": lag } },
          (_span, ctx) => this.coordinator.refreshClaimed(row, owner, until, ctx) ?? Promise.resolve(undefined),
        )
      : this.coordinator.refreshClaimed(row, owner, until);
    if (!started) return;
    this.stats.started++;
    this.onStart(row.provider, lag);
    this.inflight.set(row.provider, (this.inflight.get(row.provider) ?? 0) + 1);
    const done = started
      .then(
        () => undefined,
        (err: unknown) => this.logger.debug({ err: errSummary(err), provider: row.provider }, "background refresh failed"),
      )
      .finally(() => {
        this.inflight.set(row.provider, (this.inflight.get(row.provider) ?? 1) - 1);
        this.running.delete(done);
        if (this.backlog.has(row.provider)) this.scheduleRefill(row.provider, REFILL_DELAY_MS);
      });
    this.running.add(done);
  }

  private scheduleRefill(provider: string, delayMs: number): void {
    if (this.stopped || this.refills.has(provider)) return;
    const t = setTimeout(() => {
      this.refills.delete(provider);
      if (this.stopped) return;
      this.fill(provider).catch((err: unknown) => this.logger.debug({ err: errSummary(err), provider }, "background claim failed"));
    }, delayMs);
    t.unref();
    this.refills.set(provider, t);
  }
}
