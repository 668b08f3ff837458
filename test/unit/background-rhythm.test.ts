import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";
import pino from "pino";
import type { RefreshConfig } from "../../src/config.js";
import type { SessionRow } from "../../src/db/session-entity.js";
import type { SessionRepository } from "../../src/db/session-repository.js";
import type { ProviderRegistry } from "../../src/providers/provider-client.js";
import { BackgroundRefresher } from "../../src/refresh/background.js";
import type { RefreshCoordinator, RefreshResult } from "../../src/refresh/coordinator.js";

/**
 * When the background refresher claims again: right after refreshes finish
 * while more sessions were due, right after a claim that ran while slots
 * were freed, and soon (not at the next pass) when the cluster's cap was
 * full and none of its own refreshes will finish to claim again. The pass
 * interval is an hour, so every claim after the first comes from that rhythm.
 */

const HOUR = 3_600_000;

function config(perReplica: number): RefreshConfig {
  return {
    leaseMs: 30_000,
    providerTimeoutMs: 10_000,
    maxAttempts: 1,
    retryBaseDelayMs: 100,
    keepAliveMs: 0,
    absoluteLifetimeMs: 0,
    background: { enabled: true, intervalMs: HOUR, recentWindowMs: HOUR, maxInflightPerProvider: perReplica, clusterMaxInflightPerProvider: 64, batchSize: 200 },
  };
}

function row(i: number): SessionRow {
  const now = Date.now();
  return {
    id: `s${i}`,
    provider: "corp",
    userId: `u${i}`,
    lastUsedAt: new Date(now),
    accessIssuedAt: new Date(now - 240_000),
    accessExpiresAt: new Date(now + 60_000),
    refreshAt: new Date(now - 1000),
    keepAliveAt: null,
  } as unknown as SessionRow;
}

type Claim = { rows: SessionRow[]; more: boolean };

function setup(perReplica: number, answers: Array<Claim | Promise<Claim>>) {
  const claims: Array<{ limit: number }> = [];
  const finish: Array<() => void> = [];
  const repo = {
    claimDue: vi.fn((q: { limit: number }) => {
      claims.push({ limit: q.limit });
      return Promise.resolve(answers.shift() ?? { rows: [], more: false });
    }),
    releaseLeaseClean: vi.fn(() => Promise.resolve(true)),
  } as unknown as SessionRepository;
  const coordinator = {
    replicaId: "r1",
    schedule: { leadSeconds: () => 65, aheadSeconds: () => 65 },
    refreshClaimed: () => new Promise<RefreshResult>((resolve) => finish.push(() => resolve({} as RefreshResult))),
  } as unknown as RefreshCoordinator;
  const providers = { ids: () => ["corp"], get: () => ({ config: { refreshMarginSeconds: 60 } }) } as unknown as ProviderRegistry;
  const refresher = new BackgroundRefresher(repo, coordinator, providers, config(perReplica), pino({ level: "silent" }));
  return { refresher, claims, finish };
}

/** Lets the claim's promise chain and the refreshes' `finally` handlers run. */
const settle = () => vi.advanceTimersByTimeAsync(0);

describe("background refresh claim rhythm", () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("claims the freed slots shortly after refreshes finish while more sessions were due", async () => {
    const { refresher, claims, finish } = setup(2, [{ rows: [row(1), row(2)], more: true }, { rows: [row(3)], more: false }]);
    refresher.start();
    await refresher.pass();
    expect(claims).toEqual([{ limit: 2 }]);
    finish.shift()!();
    await settle();
    // Not at once: a short window, so that refreshes finishing together share one claim.
    expect(claims).toHaveLength(1);
    finish.shift()!();
    await vi.advanceTimersByTimeAsync(50);
    expect(claims).toEqual([{ limit: 2 }, { limit: 2 }]);
    // That claim found fewer than it could take: nothing more until the next pass.
    finish.shift()!();
    await vi.advanceTimersByTimeAsync(1000);
    expect(claims).toHaveLength(2);
    await refresher.stop();
  });

  it("looks again soon after finding the cluster's cap full with nothing of its own in flight, not at the next pass", async () => {
    const { refresher, claims, finish } = setup(4, [{ rows: [], more: true }, { rows: [], more: true }, { rows: [row(1)], more: false }]);
    refresher.start();
    await refresher.pass();
    expect(claims).toHaveLength(1);
    await vi.advanceTimersByTimeAsync(1000);
    expect(claims).toHaveLength(3);
    await vi.advanceTimersByTimeAsync(5000);
    expect(claims).toHaveLength(3);
    finish.shift()!();
    await refresher.stop();
  });

  it("claims again right after a claim during which its refreshes finished", async () => {
    let release!: (c: Claim) => void;
    const slow = new Promise<Claim>((resolve) => (release = resolve));
    const { refresher, claims, finish } = setup(2, [{ rows: [row(1), row(2)], more: true }, slow, { rows: [], more: false }]);
    refresher.start();
    await refresher.pass();
    finish.shift()!();
    await vi.advanceTimersByTimeAsync(50);
    expect(claims).toHaveLength(2); // the refill, still running
    finish.shift()!(); // a slot frees while that claim runs
    await vi.advanceTimersByTimeAsync(50);
    expect(claims).toHaveLength(2);
    release({ rows: [row(3)], more: true });
    await vi.advanceTimersByTimeAsync(50);
    expect(claims).toHaveLength(3);
    finish.shift()!();
    await refresher.stop();
  });
});
