import { setTimeout as sleep } from "node:timers/promises";
import { classifyProviderError, ProviderError } from "./errors.js";

export interface RetryPolicy {
  maxAttempts: number;
  baseDelayMs: number;
  /** Timeout of one attempt. */
  attemptTimeoutMs: number;
}

/** What one attempt gets: a signal that fires on its own timeout or on the overall deadline. */
export interface Attempt {
  signal: AbortSignal;
  number: number;
}

/**
 * Runs `fn` until it succeeds, fails for good, runs out of attempts or would
 * overrun `deadline` (epoch ms). Retries only errors classified retryable
 * (network, 5xx, 429, timeouts) with exponential backoff and full jitter, and
 * waits at least as long as a Retry-After asks. Never sleeps past the deadline.
 */
export async function withRetries<T>(
  fn: (attempt: Attempt) => Promise<T>,
  policy: RetryPolicy,
  deadline: number,
  signal?: AbortSignal,
  onRetry?: (err: ProviderError, delayMs: number, attempt: number) => void,
): Promise<T> {
  for (let number = 1; ; number++) {
    const remaining = deadline - Date.now();
    if (remaining <= 0) throw new ProviderError("unavailable", "deadline", { retryable: false });
    const timeout = AbortSignal.timeout(Math.max(1, Math.min(policy.attemptTimeoutMs, remaining)));
    const attemptSignal = signal ? AbortSignal.any([timeout, signal]) : timeout;
    let error: ProviderError;
    try {
      return await fn({ signal: attemptSignal, number });
    } catch (err) {
      error = classifyProviderError(err);
      if (error.code === "aborted" && timeout.aborted) {
        error = new ProviderError("unavailable", "timeout", { retryable: true, cause: err });
      }
    }
    if (!error.retryable || number >= policy.maxAttempts || signal?.aborted) throw error;
    const backoff = Math.random() * policy.baseDelayMs * 2 ** (number - 1);
    const delay = Math.max(backoff, error.options.retryAfterMs ?? 0);
    // Not enough time left for the wait plus a useful attempt: report now.
    if (Date.now() + delay + 50 >= deadline) throw error;
    onRetry?.(error, delay, number);
    await sleep(delay, undefined, { signal }).catch(() => undefined);
    if (signal?.aborted) throw error;
  }
}
