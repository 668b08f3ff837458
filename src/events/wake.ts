import type { ChangeChannel } from "../db/pg-channel.js";
import { EVENTS_MESSAGE } from "../db/event-repository.js";

/** What EventWake listens to: the outbox's in-process hook. */
export interface AppendSource {
  onAppended(listener: () => void): () => void;
}

/**
 * Tells readers of the outbox that new events may have been committed: at
 * once after a commit in this process, on a NOTIFY from another replica
 * (PostgreSQL), when the change channel comes back after an outage (NOTIFYs
 * may have been missed), and on a slow poll as the safety net. A wake is a
 * hint only: the reader reads after its cursor and may find nothing.
 */
export class EventWake {
  private readonly listeners = new Set<() => void>();
  private readonly timer: NodeJS.Timeout | undefined;
  private readonly unhook: () => void;
  private closed = false;

  constructor(source: AppendSource, channel: ChangeChannel | undefined, pollMs: number) {
    this.unhook = source.onAppended(() => this.wake());
    channel?.onMessage((message) => {
      if (message === EVENTS_MESSAGE) this.wake();
    });
    channel?.onStateChange((connected) => {
      if (connected) this.wake();
    });
    if (pollMs > 0) {
      this.timer = setInterval(() => this.wake(), pollMs);
      this.timer.unref();
    }
  }

  /** Calls `listener` on every wake until the returned function is called. */
  subscribe(listener: () => void): () => void {
    if (this.closed) return () => undefined;
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /** Wakes every subscriber (also usable by tests and by shutdown, so readers notice). */
  wake(): void {
    for (const l of [...this.listeners]) {
      try {
        l();
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  /** Stops the poll and forgets every subscriber. */
  close(): void {
    this.closed = true;
    if (this.timer) clearInterval(this.timer);
    this.unhook();
    this.listeners.clear();
  }
}
