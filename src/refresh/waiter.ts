import { setTimeout as sleep } from "node:timers/promises";
import type { ChangeChannel } from "../db/pg-channel.js";
import { sessionRef } from "../logger.js";

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

const PREFIX = "changed:";

/**
 * Wakes waiters of a session in this process and, given a channel (PostgreSQL
 * LISTEN/NOTIFY), in every other replica. Messages carry only the short hash
 * of a session id. Without a channel (SQLite) other processes just poll.
 */
export class SessionWaiter implements RowWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();

  constructor(private readonly channel?: ChangeChannel) {
    channel?.onMessage((message) => {
      if (message.startsWith(PREFIX)) this.wakeRef(message.slice(PREFIX.length));
    });
  }

  async wait(sessionId: string, maxMs: number): Promise<void> {
    const ref = sessionRef(sessionId);
    const ac = new AbortController();
    let set = this.waiting.get(ref);
    if (!set) {
      set = new Set();
      this.waiting.set(ref, set);
    }
    const wake = () => ac.abort();
    set.add(wake);
    try {
      await sleep(maxMs, undefined, { signal: ac.signal }).catch(() => undefined);
    } finally {
      set.delete(wake);
      if (set.size === 0) this.waiting.delete(ref);
    }
  }

  private wakeRef(ref: string): void {
    const set = this.waiting.get(ref);
    if (set) for (const wake of [...set]) wake();
  }

  async notify(sessionId: string): Promise<void> {
    const ref = sessionRef(sessionId);
    this.wakeRef(ref);
    await this.channel?.publish(`${PREFIX}${ref}`);
  }

  /** Whether other replicas can be woken at once (false: they poll). */
  get broadcasting(): boolean {
    return this.channel?.connected ?? false;
  }

  async close(): Promise<void> {
    for (const set of this.waiting.values()) for (const wake of [...set]) wake();
    await this.channel?.close();
  }
}
