import { describe, expect, it } from "vitest";
import type { RefreshConfig } from "../../src/config.js";
import { keepAliveFraction, RefreshSchedule } from "../../src/refresh/schedule.js";

const DAY = 86_400_000;
const config = (keepAliveMs: number, absoluteLifetimeMs = 90 * DAY): RefreshConfig => ({
  leaseMs: 30_000,
  providerTimeoutMs: 10_000,
  maxAttempts: 3,
  retryBaseDelayMs: 200,
  keepAliveMs,
  absoluteLifetimeMs,
  background: { enabled: true, intervalMs: 2000, recentWindowMs: DAY, maxInflightPerProvider: 32, clusterMaxInflightPerProvider: 64, batchSize: 200 },
});
/** No provider configured: the default 60 s margin. */
const noProviders = { get: () => undefined };
const now = new Date("2026-12-03T12:00:00Z");
const row = (id: string, extra: { refreshExpiresAt?: Date | null; createdAt?: Date; lastUsedAt?: Date } = {}) => ({
  id,
  provider: "corp",
  accessIssuedAt: now,
  accessExpiresAt: new Date(now.getTime() + 300_000),
  refreshExpiresAt: extra.refreshExpiresAt ?? null,
  createdAt: extra.createdAt ?? now,
  lastUsedAt: extra.lastUsedAt ?? now,
});

describe("refresh schedule", () => {
  it("refreshes a used session its lead before expiry: the margin plus two scan intervals and a second", () => {
    const due = new RefreshSchedule(noProviders, config(DAY)).dueTimes(row("a"), now);
    expect(due.refreshAt!.getTime()).toBe(now.getTime() + 300_000 - 65_000);
    // Not used within the recent window: refreshed only when due for keep-alive.
    const idle = new RefreshSchedule(noProviders, config(DAY)).dueTimes(row("a", { lastUsedAt: new Date(now.getTime() - DAY - 1) }), now);
    expect(idle.refreshAt).toEqual(idle.keepAliveAt);
    const off = new RefreshSchedule(noProviders, config(0)).dueTimes(row("a", { lastUsedAt: new Date(now.getTime() - DAY - 1) }), now);
    expect(off.refreshAt!.getTime()).toBeGreaterThan(now.getTime() + 365 * DAY);
  });

  it("keeps each session alive within 70 to 95 % of the period, spread evenly over sessions", () => {
    const schedule = new RefreshSchedule(noProviders, config(DAY));
    const offsets = Array.from({ length: 2000 }, (_, i) => (schedule.dueTimes(row(`session-${i}`), now).keepAliveAt!.getTime() - now.getTime()) / DAY);
    expect(Math.min(...offsets)).toBeGreaterThanOrEqual(0.7);
    expect(Math.max(...offsets)).toBeLessThan(0.95);
    // Each tenth of the range holds about a tenth of the sessions: not all at once.
    const buckets = Array.from({ length: 10 }, (_, b) => offsets.filter((o) => Math.floor((o - 0.7) / 0.025) === b).length);
    for (const n of buckets) expect(n).toBeGreaterThan(120);
    // The same session falls at the same point every time.
    expect(keepAliveFraction("session-1")).toBe(keepAliveFraction("session-1"));
  });

  it("refreshes ahead of a stated refresh-token expiry, and not past the absolute lifetime or with keep-alive off", () => {
    const schedule = new RefreshSchedule(noProviders, config(DAY));
    const soon = schedule.dueTimes(row("b", { refreshExpiresAt: new Date(now.getTime() + 3_600_000) }), now);
    expect(soon.keepAliveAt!.getTime()).toBe(now.getTime() + 3_600_000 - 65_000);
    const short = schedule.dueTimes(row("c", { refreshExpiresAt: new Date(now.getTime() + 8000) }), now);
    expect(short.keepAliveAt!.getTime()).toBe(now.getTime() + 4000);
    const old = schedule.dueTimes(row("d", { createdAt: new Date(now.getTime() - 90 * DAY + 3_600_000) }), now);
    expect(old.keepAliveAt).toBeNull();
    expect(new RefreshSchedule(noProviders, config(0)).dueTimes(row("e", { refreshExpiresAt: new Date(now.getTime() + 8000) }), now).keepAliveAt).toBeNull();
  });
});
