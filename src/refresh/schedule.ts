import { createHash } from "node:crypto";
import type { RefreshConfig } from "../config.js";
import type { SessionRow } from "../db/session-entity.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import { lifetimeSeconds, refreshMarginSeconds } from "../sessions/expiry.js";

/** A session's due times, written with each of its tokens (see SessionRow.refreshAt and keepAliveAt). */
export type RefreshDue = Pick<SessionRow, "refreshAt" | "keepAliveAt">;

/** What the due times are computed from. */
export type ScheduledFields = Pick<
  SessionRow,
  "id" | "provider" | "accessIssuedAt" | "accessExpiresAt" | "refreshExpiresAt" | "createdAt" | "lastUsedAt"
>;

/** refresh_at of a session that is not refreshed for being used: later than any due time. */
const NEVER = new Date("9999-12-31T00:00:00Z");

/**
 * Where in the keep-alive period a session falls, in [0, 1): the same for a
 * session every time, spread evenly over sessions, so sessions stored
 * together are not kept alive together.
 */
export function keepAliveFraction(sessionId: string): number {
  return createHash("sha256").update(sessionId).digest().readUInt32BE(0) / 2 ** 32;
}

/**
 * The refresher's schedule: when a recently used session is refreshed (its
 * token's expiry less the lead), and when any session is refreshed to keep
 * it alive (within `keep_alive_seconds` of its last token, each session at
 * its own point in the period, and ahead of a refresh token's known expiry),
 * never past the sessions' absolute lifetime.
 */
export class RefreshSchedule {
  constructor(
    /** Where each provider's refresh margin comes from. */
    private readonly providers: Pick<ProviderRegistry, "get">,
    private readonly config: RefreshConfig,
  ) {}

  /** How far ahead of expiry a used session is refreshed: before the hot path's margin would make a caller wait. */
  aheadSeconds(row: Pick<SessionRow, "provider" | "accessIssuedAt" | "accessExpiresAt">): number {
    const lifetime = lifetimeSeconds(row.accessIssuedAt, row.accessExpiresAt);
    const margin = refreshMarginSeconds(this.providers.get(row.provider)?.config.refreshMarginSeconds ?? 60, lifetime);
    return Math.min(this.leadSeconds(margin), Math.floor(lifetime * 0.75));
  }

  /** The margin plus two scan intervals and a second: a session due is claimed before the hot path needs it. */
  leadSeconds(marginSeconds: number): number {
    return marginSeconds + (2 * this.config.background.intervalMs) / 1000 + 1;
  }

  /**
   * The due times of a session whose tokens are written at `now`. One not
   * used within the recent window is refreshed only to keep it alive: its
   * refresh_at is its keep-alive time (or never), so that the sessions
   * nobody uses do not pile up among those due for being used. A GetToken
   * that finds its token expired refreshes it, and schedules it again.
   */
  dueTimes(row: ScheduledFields, now: Date): RefreshDue {
    const keepAliveAt = this.keepAliveAt(row, now);
    const used = row.lastUsedAt.getTime() >= now.getTime() - this.config.background.recentWindowMs;
    const refreshAt = used ? new Date(row.accessExpiresAt.getTime() - this.aheadSeconds(row) * 1000) : (keepAliveAt ?? NEVER);
    return { refreshAt, keepAliveAt };
  }

  private keepAliveAt(row: ScheduledFields, now: Date): Date | null {
    const { keepAliveMs, absoluteLifetimeMs } = this.config;
    if (keepAliveMs <= 0) return null;
    // Between 70 % and 95 % of the period after this write: at least once per period, with room for a late pass.
    let due = now.getTime() + keepAliveMs * (0.7 + 0.25 * keepAliveFraction(row.id));
    if (row.refreshExpiresAt) {
      const left = row.refreshExpiresAt.getTime() - now.getTime();
      const lead = Math.min(this.leadSeconds(60) * 1000, left / 2);
      due = Math.min(due, row.refreshExpiresAt.getTime() - lead);
    }
    if (absoluteLifetimeMs > 0 && due >= row.createdAt.getTime() + absoluteLifetimeMs) return null;
    return new Date(due);
  }
}
