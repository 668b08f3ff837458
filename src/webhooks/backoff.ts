/** The retry schedule: exponential from `baseMs`, capped at `maxMs`, with full jitter. */
export interface Backoff {
  baseMs: number;
  maxMs: number;
}

/**
 * The delay before the attempt after `attempts` failed ones: a uniformly
 * random time up to base·2^(attempts-1), capped (full jitter), but at least
 * a tenth of that bound, so a failing receiver is not hammered.
 * `random` is in [0, 1).
 */
export function retryDelayMs(attempts: number, b: Backoff, random: () => number = Math.random): number {
  const bound = Math.min(b.maxMs, b.baseMs * 2 ** Math.min(Math.max(attempts - 1, 0), 40));
  return Math.round(bound * (0.1 + 0.9 * random()));
}

/** A Retry-After header (seconds or an HTTP date) as milliseconds from `now`, or undefined. */
export function retryAfterMs(header: string | null, now: Date): number | undefined {
  if (!header) return undefined;
  const value = header.trim();
  if (/^\d{1,9}$/.test(value)) return Number(value) * 1000;
  const at = Date.parse(value);
  return Number.isFinite(at) ? Math.max(0, at - now.getTime()) : undefined;
}
