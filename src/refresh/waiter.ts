import { setTimeout as sleep } from "node:timers/promises";

/**
 * How a replica waiting on another's refresh learns that the row changed.
 * `wait` resolves after at most `maxMs`, earlier when notified; the caller
 * re-reads the row either way, so a missed notification costs only latency.
 */
export interface RowWaiter {
  wait(sessionId: string, maxMs: number): Promise<void>;
  /** Tells waiters (here and on other replicas) that the row changed. */
  notify(sessionId: string): Promise<void>;
  close(): Promise<void>;
}

/**
 * In-process wake-ups plus polling. Enough for SQLite, where all callers of a
 * database file are normally one process; other processes poll.
 */
export class LocalWaiter implements RowWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();

  async wait(sessionId: string, maxMs: number): Promise<void> {
    const ac = new AbortController();
    let set = this.waiting.get(sessionId);
    if (!set) {
      set = new Set();
      this.waiting.set(sessionId, set);
    }
    const wake = () => ac.abort();
    set.add(wake);
    try {
      await sleep(maxMs, undefined, { signal: ac.signal }).catch(() => undefined);
    } finally {
      set.delete(wake);
      if (set.size === 0) this.waiting.delete(sessionId);
    }
  }

  /** Wakes local waiters of this session. */
  wake(sessionId: string): void {
    const set = this.waiting.get(sessionId);
    if (set) for (const wake of [...set]) wake();
  }

  async notify(sessionId: string): Promise<void> {
    this.wake(sessionId);
  }

  async close(): Promise<void> {
    for (const set of this.waiting.values()) for (const wake of [...set]) wake();
  }
}
