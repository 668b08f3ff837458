import type { SweeperConfig } from "../config.js";
import type { SessionRepository } from "../db/session-repository.js";
import type { Logger } from "../logger.js";
import { PeriodicTask } from "./periodic.js";
import { NO_SPANS, type Spans } from "../tracing/spans.js";

/** Batches per category per pass, so one pass never runs for long. */
const MAX_BATCHES_PER_PASS = 20;

export interface SweepResult {
  expiredLifetime: number;
  reauthRetained: number;
  unrefreshable: number;
  /** Started authorizations past their lifetime, and logout tokens past their replay window. */
  authorizationStates: number;
  logoutTokens: number;
  /** Audience tokens whose session was deleted while a refresh was storing them. */
  audienceOrphans: number;
  /** Revoked and logged-out sessions past `sessions.ended_retention_seconds`, and events past `events.retention_seconds`. */
  endedSessions: number;
  events: number;
}

/** The authorization code flow's own expiring rows. */
export interface AuthorizationSweeps {
  sweepStates(before: Date, limit: number): Promise<number>;
  sweepLogoutTokens(before: Date): Promise<number>;
}

/** Audience tokens left without their session. */
export interface AudienceSweeps {
  deleteOrphans(limit: number): Promise<number>;
}

/**
 * Deletes, in batches, sessions that are past the absolute lifetime, that
 * have needed a new login for longer than the retention, or whose refresh
 * token is known to have expired; and started authorizations and seen
 * logout tokens past their lifetime, audience tokens whose session is
 * gone, ended sessions and events past their retention. Every replica may
 * sweep: deletes are idempotent.
 */
export class Sweeper {
  private readonly task: PeriodicTask;
  readonly totals: SweepResult = {
    expiredLifetime: 0,
    reauthRetained: 0,
    unrefreshable: 0,
    authorizationStates: 0,
    logoutTokens: 0,
    audienceOrphans: 0,
    endedSessions: 0,
    events: 0,
  };

  constructor(
    private readonly repo: SessionRepository,
    private readonly config: SweeperConfig,
    private readonly logger: Logger,
    /** Told when sessions were deleted, so caches forget them. */
    private readonly onDeleted: () => Promise<void> = async () => undefined,
    private readonly authorization?: AuthorizationSweeps,
    private readonly audiences?: AudienceSweeps,
    private readonly spans: Spans = NO_SPANS,
  ) {
    this.task = new PeriodicTask("sweeper", config.intervalMs, async () => {
      // Each periodic pass is a trace of its own; what it deleted goes on the span.
      await this.spans.run("sweeper pass", undefined, { root: true, attributes: this.spans.db }, async (span) => {
        const result = await this.sweep();
        for (const [k, v] of Object.entries(result)) span?.setAttribute(`token_service.swept.${k}`, v);
      });
    }, logger);
  }

  start(): void {
    this.task.start();
  }

  stop(): Promise<void> {
    return this.task.stop();
  }

  /** One pass over every category. */
  async sweep(now = new Date()): Promise<SweepResult> {
    const { batchSize, absoluteLifetimeMs, reauthRetentionMs, endedRetentionMs, eventRetentionMs } = this.config;
    const drain = async (batch: () => Promise<number>) => {
      let total = 0;
      for (let i = 0; i < MAX_BATCHES_PER_PASS; i++) {
        const n = await batch();
        total += n;
        if (n < batchSize) break;
      }
      return total;
    };
    const result: SweepResult = {
      expiredLifetime:
        absoluteLifetimeMs > 0
          ? await drain(() => this.repo.deleteOlderThan(new Date(now.getTime() - absoluteLifetimeMs), batchSize))
          : 0,
      reauthRetained: await drain(() => this.repo.deleteReauthBefore(new Date(now.getTime() - reauthRetentionMs), batchSize)),
      unrefreshable: await drain(() => this.repo.deleteUnrefreshable(now, batchSize)),
      authorizationStates: this.authorization ? await drain(() => this.authorization!.sweepStates(now, batchSize)) : 0,
      logoutTokens: this.authorization ? await this.authorization.sweepLogoutTokens(now) : 0,
      // After the session sweeps above: their audience tokens are orphans now.
      audienceOrphans: this.audiences ? await drain(() => this.audiences!.deleteOrphans(batchSize)) : 0,
      endedSessions: await drain(() => this.repo.deleteEndedBefore(new Date(now.getTime() - endedRetentionMs), batchSize)),
      events: await drain(() => this.repo.events.purge(new Date(now.getTime() - eventRetentionMs), batchSize)),
    };
    for (const k of Object.keys(result) as Array<keyof SweepResult>) this.totals[k] += result[k];
    const sessions = result.expiredLifetime + result.reauthRetained + result.unrefreshable;
    if (Object.values(result).some((n) => n > 0)) this.logger.info({ ...result }, "swept");
    if (sessions > 0) await this.onDeleted();
    return result;
  }
}
