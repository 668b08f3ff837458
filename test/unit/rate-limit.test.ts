import { describe, expect, it } from "vitest";
import { TokenBucket } from "../../src/rpc/rate-limit.js";

/** A clock the test moves by hand, in milliseconds. */
function manualClock(start = 1_000_000) {
  let t = start;
  return {
    now: () => t,
    advance(ms: number) {
      t += ms;
    },
  };
}

/** Calls take() `count` times and returns how many succeeded. */
function takeMany(bucket: TokenBucket, count: number): number {
  let ok = 0;
  for (let i = 0; i < count; i++) if (bucket.take()) ok++;
  return ok;
}

describe("TokenBucket", () => {
  it("starts full: the whole burst is available at once, then it is empty", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(10, 5, clock.now);
    expect([1, 2, 3, 4, 5].map(() => bucket.take())).toEqual([true, true, true, true, true]);
    expect(bucket.take()).toBe(false);
    expect(bucket.take()).toBe(false);
  });

  it("refills at perSecond", () => {
    const clock = manualClock();
    // 4 per second: one token every 250 ms (binary-exact arithmetic).
    const bucket = new TokenBucket(4, 10, clock.now);
    expect(takeMany(bucket, 10)).toBe(10);
    expect(bucket.take()).toBe(false);

    clock.advance(250);
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);

    clock.advance(1000);
    expect(takeMany(bucket, 10)).toBe(4);
  });

  it("does not hand out a partial token, and keeps the fraction across refused takes", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(4, 1, clock.now);
    expect(bucket.take()).toBe(true);
    clock.advance(125); // half a token
    expect(bucket.take()).toBe(false);
    clock.advance(125); // the other half
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);
  });

  it("refused takes do not drain the bucket below empty", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(4, 2, clock.now);
    expect(takeMany(bucket, 2)).toBe(2);
    expect(takeMany(bucket, 1000)).toBe(0);
    clock.advance(250);
    expect(bucket.take()).toBe(true);
  });

  it("never holds more than burst, however long it was idle", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(100, 3, clock.now);
    clock.advance(3_600_000); // an hour idle, from full
    expect(takeMany(bucket, 10)).toBe(3);

    clock.advance(86_400_000); // a day idle, from empty
    expect(takeMany(bucket, 10)).toBe(3);
  });

  it("sustains exactly perSecond over a long run, plus the initial burst", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(4, 2, clock.now);
    // Spend the burst first: tokens that would overflow a full bucket are lost.
    let ok = takeMany(bucket, 2);
    // Poll every 125 ms for 10 s: 40 tokens accrue.
    for (let i = 0; i < 80; i++) {
      clock.advance(125);
      if (bucket.take()) ok++;
    }
    expect(ok).toBe(42);
  });

  it("supports fractional rates below one per second", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(0.5, 1, clock.now); // one call every 2 s
    expect(bucket.take()).toBe(true);
    clock.advance(1000);
    expect(bucket.take()).toBe(false);
    clock.advance(1000);
    expect(bucket.take()).toBe(true);
    expect(bucket.take()).toBe(false);

    const slow = new TokenBucket(0.25, 2, clock.now); // one call every 4 s, burst 2
    expect(takeMany(slow, 5)).toBe(2);
    clock.advance(3999);
    expect(slow.take()).toBe(false);
    clock.advance(1);
    expect(slow.take()).toBe(true);
    clock.advance(60_000);
    expect(takeMany(slow, 5)).toBe(2);
  });

  it("supports fractional rates above one per second", () => {
    const clock = manualClock();
    const bucket = new TokenBucket(2.5, 1, clock.now); // one call every 400 ms
    expect(bucket.take()).toBe(true);
    clock.advance(200);
    expect(bucket.take()).toBe(false);
    clock.advance(200);
    expect(bucket.take()).toBe(true);
    clock.advance(2000); // 5 tokens accrue, 1 kept
    expect(takeMany(bucket, 3)).toBe(1);
  });

  it("keeps a non-binary rate over a long run within one token", () => {
    // 1/3 per second, polled every 100 ms for 60 s: 20 tokens accrue, plus 1 at start.
    // Summing many tiny float increments can land a hair under a whole token, so
    // the count may trail by one; it must never run ahead.
    const clock = manualClock();
    const bucket = new TokenBucket(1 / 3, 1, clock.now);
    let ok = 0;
    for (let i = 0; i < 600; i++) {
      clock.advance(100);
      if (bucket.take()) ok++;
    }
    expect(ok).toBeGreaterThanOrEqual(20);
    expect(ok).toBeLessThanOrEqual(21);
  });

  it("keeps buckets independent", () => {
    const clock = manualClock();
    const a = new TokenBucket(1, 1, clock.now);
    const b = new TokenBucket(1, 1, clock.now);
    expect(a.take()).toBe(true);
    expect(a.take()).toBe(false);
    expect(b.take()).toBe(true);
  });

  it("uses a real clock by default: the burst is there at once", () => {
    // A rate this low cannot refill a token while the test runs.
    const bucket = new TokenBucket(0.001, 2);
    expect(takeMany(bucket, 5)).toBe(2);
  });
});
