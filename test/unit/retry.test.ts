import { performance } from "node:perf_hooks";
import { ResponseBodyError } from "openid-client";
import { describe, expect, it } from "vitest";
import { ProviderError } from "../../src/providers/errors.js";
import { withRetries, type Attempt } from "../../src/providers/retry.js";

const policy = { maxAttempts: 3, baseDelayMs: 1, attemptTimeoutMs: 5_000 };
const farDeadline = () => Date.now() + 30_000;
const networkError = () => new TypeError("fetch failed");
const unavailable = (retryAfterMs?: number) =>
  new ProviderError("unavailable", "http_503", { status: 503, retryable: true, retryAfterMs });

/** Resolves once `signal` aborts, then throws its reason the way fetch does. */
function untilAborted(signal: AbortSignal): Promise<never> {
  return new Promise((_, reject) => {
    if (signal.aborted) reject(signal.reason);
    signal.addEventListener("abort", () => reject(signal.reason), { once: true });
  });
}

async function rejection(p: Promise<unknown>): Promise<ProviderError> {
  const err: unknown = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(ProviderError);
  return err as ProviderError;
}

describe("withRetries", () => {
  it("returns the first success without retrying", async () => {
    const attempts: number[] = [];
    const result = await withRetries(async ({ number }) => (attempts.push(number), "ok"), policy, farDeadline());
    expect(result).toBe("ok");
    expect(attempts).toEqual([1]);
  });

  it("succeeds after transient failures, numbering the attempts", async () => {
    const attempts: number[] = [];
    const retries: Array<[string, number]> = [];
    const result = await withRetries(
      async ({ number }) => {
        attempts.push(number);
        if (number === 1) throw networkError();
        if (number === 2) throw unavailable();
        return "token";
      },
      policy,
      farDeadline(),
      undefined,
      (err, _delay, attempt) => retries.push([err.code, attempt]),
    );
    expect(result).toBe("token");
    expect(attempts).toEqual([1, 2, 3]);
    expect(retries).toEqual([
      ["network", 1],
      ["http_503", 2],
    ]);
  });

  it("does not retry a rejected grant", async () => {
    let calls = 0;
    const err = await rejection(
      withRetries(
        async () => {
          calls++;
          throw new ResponseBodyError("x", { cause: { error: "invalid_grant" }, response: new Response(null, { status: 400 }) });
        },
        policy,
        farDeadline(),
      ),
    );
    expect(calls).toBe(1);
    expect(err).toMatchObject({ kind: "rejected", code: "invalid_grant" });
  });

  it("does not retry an unretryable unavailable error", async () => {
    let calls = 0;
    const err = await rejection(
      withRetries(
        async () => {
          calls++;
          throw new Error("programming error");
        },
        policy,
        farDeadline(),
      ),
    );
    expect(calls).toBe(1);
    expect(err.code).toBe("client_error");
  });

  it.each([1, 2, 4])("stops after maxAttempts=%i and reports the last error", async (maxAttempts) => {
    let calls = 0;
    const err = await rejection(
      withRetries(
        async () => {
          calls++;
          throw networkError();
        },
        { ...policy, maxAttempts },
        farDeadline(),
      ),
    );
    expect(calls).toBe(maxAttempts);
    expect(err).toMatchObject({ kind: "unavailable", code: "network", retryable: true });
  });

  it("waits at least as long as Retry-After asks", async () => {
    for (const retryAfterMs of [30, 80]) {
      const startedAt: number[] = [];
      const delays: number[] = [];
      await withRetries(
        async ({ number }) => {
          startedAt.push(performance.now());
          if (number === 1) throw unavailable(retryAfterMs);
          return "ok";
        },
        policy,
        farDeadline(),
        undefined,
        (_err, delay) => delays.push(delay),
      );
      // baseDelayMs 1 makes the jittered backoff < 1 ms, so the wait is exactly Retry-After.
      expect(delays).toEqual([retryAfterMs]);
      const [first = 0, second = 0] = startedAt;
      // 1 ms slack for timer rounding between libuv's clock and performance.now().
      expect(second - first).toBeGreaterThanOrEqual(retryAfterMs - 1);
    }
  });

  it("backs off with a jittered delay within base * 2^(n-1)", async () => {
    const delays: number[] = [];
    await expect(
      withRetries(
        async () => {
          throw networkError();
        },
        { ...policy, maxAttempts: 4, baseDelayMs: 8 },
        farDeadline(),
        undefined,
        (_err, delay) => delays.push(delay),
      ),
    ).rejects.toBeInstanceOf(ProviderError);
    expect(delays).toHaveLength(3);
    delays.forEach((d, i) => {
      expect(d).toBeGreaterThanOrEqual(0);
      expect(d).toBeLessThan(8 * 2 ** i);
    });
  });

  it("throws at once, without sleeping, when Retry-After exceeds the remaining budget", async () => {
    let calls = 0;
    const retries: number[] = [];
    const asked = unavailable(10_000);
    const err = await rejection(
      withRetries(
        async () => {
          calls++;
          throw asked;
        },
        policy,
        Date.now() + 2_000,
        undefined,
        (_e, delay) => retries.push(delay),
      ),
    );
    expect(err).toBe(asked);
    expect(calls).toBe(1);
    expect(retries).toEqual([]);
  });

  it("does not start an attempt once the deadline has passed", async () => {
    let calls = 0;
    const err = await rejection(
      withRetries(
        async () => {
          calls++;
          return "never";
        },
        policy,
        Date.now() - 1,
      ),
    );
    expect(calls).toBe(0);
    expect(err).toMatchObject({ kind: "unavailable", code: "deadline", retryable: false });
  });

  it("aborts the attempt signal at the attempt timeout", async () => {
    const seen: Attempt[] = [];
    const started = performance.now();
    const err = await rejection(
      withRetries(
        (attempt) => {
          seen.push(attempt);
          return untilAborted(attempt.signal);
        },
        { ...policy, maxAttempts: 1, attemptTimeoutMs: 40 },
        farDeadline(),
      ),
    );
    expect(performance.now() - started).toBeGreaterThanOrEqual(39);
    expect(seen).toHaveLength(1);
    expect(seen[0]?.signal.aborted).toBe(true);
    expect((seen[0]?.signal.reason as Error).name).toBe("TimeoutError");
    expect(err).toMatchObject({ code: "timeout", retryable: true });
  });

  it("reports an AbortError caused by its own attempt timeout as a retryable timeout", async () => {
    const attempts: number[] = [];
    const result = await withRetries(
      async ({ signal, number }) => {
        attempts.push(number);
        if (number === 1) {
          await untilAborted(signal).catch(() => undefined);
          throw new DOMException("This operation was aborted", "AbortError");
        }
        return "second time lucky";
      },
      { ...policy, attemptTimeoutMs: 30 },
      farDeadline(),
    );
    expect(result).toBe("second time lucky");
    expect(attempts).toEqual([1, 2]);
  });

  it("caps the attempt timeout at the remaining deadline", async () => {
    let signalAborted = false;
    const err = await rejection(
      withRetries(
        async ({ signal }) => {
          await untilAborted(signal).finally(() => (signalAborted = signal.aborted));
        },
        { ...policy, attemptTimeoutMs: 60_000 },
        Date.now() + 50,
      ),
    );
    expect(signalAborted).toBe(true);
    expect(err.code).toBe("timeout");
  });

  it("stops when the caller's signal aborts during an attempt", async () => {
    const caller = new AbortController();
    let calls = 0;
    const err = await rejection(
      withRetries(
        async ({ signal }) => {
          calls++;
          setTimeout(() => caller.abort(), 10);
          return untilAborted(signal);
        },
        policy,
        farDeadline(),
        caller.signal,
      ),
    );
    expect(calls).toBe(1);
    expect(err).toMatchObject({ code: "aborted", retryable: false });
  });

  it("ends with the last provider error when the caller aborts during the backoff", async () => {
    const caller = new AbortController();
    let calls = 0;
    const err = await rejection(
      withRetries(
        async ({ signal }) => {
          calls++;
          signal.throwIfAborted();
          if (calls === 1) {
            setTimeout(() => caller.abort(), 10);
            throw unavailable(5_000);
          }
          return "refreshed after abort";
        },
        policy,
        farDeadline(),
        caller.signal,
      ),
    );
    expect(err).toMatchObject({ code: "http_503" });
    expect(calls).toBe(1);
  });

  // BUG (reported): an abort during the backoff sleep is swallowed and one more
  // attempt is started (with an already aborted signal). Marked `fails` until fixed.
  it("starts no further attempt once the caller aborts during the backoff", async () => {
    const caller = new AbortController();
    let calls = 0;
    await withRetries(
      async () => {
        calls++;
        if (calls === 1) {
          setTimeout(() => caller.abort(), 10);
          throw unavailable(5_000);
        }
        return "second attempt";
      },
      policy,
      farDeadline(),
      caller.signal,
    ).catch(() => undefined);
    expect(calls).toBe(1);
  });
});
