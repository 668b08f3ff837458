import { setTimeout as sleep } from "node:timers/promises";
import type { ChangeChannel } from "../db/pg-channel.js";
import type { ChangeNotice } from "../db/refresh-statements.js";
import { sessionRef } from "../logger.js";

/**
 * A watch on one session's row, held for the whole of a wait loop (read the
 * row, try the lease, wait, read again): a change announced while the loop
 * reads or tries the lease is kept, so the next wait returns at once instead
 * of sleeping through its delay with the change already there.
 */
export interface RowWatch {
  /**
   * Resolves after at most `maxMs`, at once when a change was announced since
   * the last call. True when a change (or close()) ended the wait early;
   * false when it ran out, and at once after close(). One call at a time: a
   * loop waits, reads, waits again. A change announced during a read that
   * already saw it still ends the next wait at once: one read more, never a
   * change missed.
   */
  next(maxMs: number): Promise<boolean>;
  /** Stops watching (the loop is over). */
  close(): void;
}

/** A wait loop's delays while another replica holds the lease: 10, 20, 40, 80, then 100 ms a round. */
export function pollDelayMs(round: number): number {
  return Math.min(100, 10 * 2 ** round);
}

/**
 * How a replica waiting on another's refresh learns that the row changed.
 * A watch's wait ends after at most its delay, earlier when notified; the
 * caller re-reads the row either way, so a missed notification costs only
 * latency.
 */
export interface RowWaiter {
  watch(sessionId: string): RowWatch;
  /** Tells waiters (here and on other replicas) that the row changed. */
  notify(sessionId: string): Promise<void>;
  /**
   * The NOTIFY that tells other replicas the row changed, for the write itself
   * to send (PostgreSQL: in the same statement, one round trip less); none
   * without a cross-replica channel. After a write that sent it, call
   * notifyLocal instead of notify.
   */
  changeNotice?(sessionId: string): ChangeNotice | undefined;
  /** notify() for this process only: the write already sent changeNotice's NOTIFY. */
  notifyLocal?(sessionId: string): void;
  close(): Promise<void>;
}

const PREFIX = "changed:";
const FLUSH = "flush";
const PROVIDERS = "providers";

/** Listeners of session changes, local or from other replicas. */
export interface SessionChangeListener {
  /** A session changed or went away (by its short ref). */
  changed(ref: string): void;
  /** Many sessions may have changed (or messages were missed): forget everything. */
  flush(): void;
  /** The cross-replica channel went down (false) or came back (true). */
  channel?(connected: boolean): void;
  /** A provider was registered or deleted (here or on another replica). */
  providers?(): void;
}

/**
 * Wakes waiters of a session in this process and, given a channel (PostgreSQL
 * LISTEN/NOTIFY), in every other replica. Messages carry only the short hash
 * of a session id. Without a channel (SQLite) other processes just poll.
 */
export class SessionWaiter implements RowWaiter {
  private readonly waiting = new Map<string, Set<() => void>>();
  private readonly listeners: SessionChangeListener[] = [];

  constructor(private readonly channel?: ChangeChannel) {
    channel?.onMessage((message) => {
      if (message.startsWith(PREFIX)) {
        const ref = message.slice(PREFIX.length);
        this.wakeRef(ref);
        for (const l of this.listeners) l.changed(ref);
      } else if (message === FLUSH) {
        for (const l of this.listeners) l.flush();
      } else if (message === PROVIDERS) {
        for (const l of this.listeners) l.providers?.();
      }
    });
    channel?.onStateChange((connected) => {
      for (const l of this.listeners) l.channel?.(connected);
    });
  }

  /** Follows changes of sessions made here or, through the channel, on other replicas; returns the unsubscribe. */
  subscribe(listener: SessionChangeListener): () => void {
    this.listeners.push(listener);
    return () => {
      const i = this.listeners.indexOf(listener);
      if (i >= 0) this.listeners.splice(i, 1);
    };
  }

  /** Whether the cross-replica channel is up (always false without one). */
  get channelConnected(): boolean {
    return this.channel?.connected ?? false;
  }

  watch(sessionId: string): RowWatch {
    const ref = sessionRef(sessionId);
    let set = this.waiting.get(ref);
    if (!set) {
      set = new Set();
      this.waiting.set(ref, set);
    }
    const watchers = set;
    /** A change came while no wait was on (between reads): the next wait returns at once. */
    let pending = false;
    let sleeping: AbortController | undefined;
    let closed = false;
    const wake = () => {
      if (sleeping) sleeping.abort();
      else pending = true;
    };
    watchers.add(wake);
    return {
      next: async (maxMs) => {
        if (pending || closed) {
          const woken = pending;
          pending = false;
          return woken;
        }
        const ac = new AbortController();
        sleeping = ac;
        try {
          await sleep(maxMs, undefined, { signal: ac.signal }).catch(() => undefined);
        } finally {
          sleeping = undefined;
        }
        return ac.signal.aborted;
      },
      close: () => {
        if (closed) return;
        closed = true;
        watchers.delete(wake);
        if (watchers.size === 0 && this.waiting.get(ref) === watchers) this.waiting.delete(ref);
        sleeping?.abort();
      },
    };
  }

  /** Sessions watched in this process (tests: a finished loop leaves none). */
  get watchedCount(): number {
    return this.waiting.size;
  }

  private wakeRef(ref: string): void {
    const set = this.waiting.get(ref);
    if (set) for (const wake of [...set]) wake();
  }

  async notify(sessionId: string): Promise<void> {
    const ref = this.notifyRef(sessionId);
    await this.channel?.publish(`${PREFIX}${ref}`);
  }

  changeNotice(sessionId: string): ChangeNotice | undefined {
    const channel = this.channel?.notifyChannel;
    return channel ? { channel, message: `${PREFIX}${sessionRef(sessionId)}` } : undefined;
  }

  notifyLocal(sessionId: string): void {
    this.notifyRef(sessionId);
  }

  private notifyRef(sessionId: string): string {
    const ref = sessionRef(sessionId);
    this.wakeRef(ref);
    for (const l of this.listeners) l.changed(ref);
    return ref;
  }

  /** Announces that the runtime providers changed (registered or deleted). */
  async notifyProviders(): Promise<void> {
    for (const l of this.listeners) l.providers?.();
    await this.channel?.publish(PROVIDERS);
  }

  /** Announces that many sessions changed at once (a sweep, a key rotation). */
  async notifyFlush(): Promise<void> {
    for (const l of this.listeners) l.flush();
    await this.channel?.publish(FLUSH);
  }

  async close(): Promise<void> {
    for (const set of this.waiting.values()) for (const wake of [...set]) wake();
    await this.channel?.close();
  }
}
