/**
 * Writes one batch of uses: each id's last_used_at set to its time, unless
 * the row already has a later one, in one statement. Returns the rows written.
 */
export type WriteLastUsed = (ids: string[], times: Date[]) => Promise<number>;

export interface LastUsedWriterOptions {
  /** How long a recorded use waits for others to be written with it (about a second). */
  flushMs: number;
  /** Most ids in one statement; this many pending are written at once. */
  batchSize: number;
  /** Most ids held while a write is under way; uses of further sessions are dropped until it is done. */
  maxPending: number;
  /** A batch not written (it is dropped, not retried), or uses dropped while full. */
  onDropped(count: number, err?: unknown): void;
}

export const LAST_USED_DEFAULTS = { flushMs: 1000, batchSize: 500, maxPending: 10_000 } as const;

/**
 * The session uses GetToken records for the background refresher's
 * "recently used" window, batched: `record` only notes the newest time per
 * session in memory, and the writer sends them about once a second (at once
 * when a batch is full), one statement per batch of up to `batchSize` ids,
 * one batch at a time (a use of a session in the batch being written is
 * that same use). Recording never waits and never fails. A batch that
 * fails is dropped, not retried (the session is recorded again at its next
 * use after the resolution window); memory is bounded by `maxPending`.
 * `close` writes what is pending, so a graceful shutdown loses nothing.
 */
export class LastUsedWriter {
  /** Session id → newest use not yet written (ms). */
  private readonly pending = new Map<string, number>();
  /** The ids of the batch being written: a use of one of them meanwhile is the same use (as at most one write per window). */
  private writing: ReadonlySet<string> = new Set();
  private timer: NodeJS.Timeout | undefined;
  /** The write loop under way, if any: one batch at a time. */
  private running: Promise<void> | undefined;
  private dropped = 0;
  private closed = false;

  constructor(
    private readonly write: WriteLastUsed,
    private readonly options: LastUsedWriterOptions,
  ) {}

  /** Notes a use of session `id` at `at`; written within about `flushMs`. */
  record(id: string, at: Date): void {
    if (this.closed || this.writing.has(id)) return;
    const t = at.getTime();
    const held = this.pending.get(id);
    if (held !== undefined) {
      if (t > held) this.pending.set(id, t);
      return;
    }
    if (this.pending.size >= this.options.maxPending) {
      this.dropped++;
      this.start(false);
      return;
    }
    this.pending.set(id, t);
    if (this.pending.size >= this.options.batchSize) this.start(false);
    else this.schedule();
  }

  /** Uses recorded and not yet written. */
  get size(): number {
    return this.pending.size;
  }

  /** Writes everything pending now (and waits for a write under way). */
  async flush(): Promise<void> {
    for (;;) {
      if (this.running) await this.running;
      else if (this.pending.size > 0) this.start(true);
      else return;
    }
  }

  /** Writes what is pending; later uses are not recorded. */
  async close(): Promise<void> {
    await this.flush();
    this.closed = true;
    clearTimeout(this.timer);
    this.timer = undefined;
  }

  private schedule(): void {
    if (this.timer || this.running) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      this.start(true);
    }, this.options.flushMs);
    // A pending use never keeps the process alive (close() writes it on a graceful shutdown).
    this.timer.unref();
  }

  /** Starts the write loop unless it runs: full batches, then (with `all`) the rest. */
  private start(all: boolean): void {
    if (this.running) return;
    clearTimeout(this.timer);
    this.timer = undefined;
    this.running = this.drain(all).finally(() => {
      this.running = undefined;
      if (this.pending.size >= this.options.batchSize) this.start(false);
      else if (this.pending.size > 0) this.schedule();
    });
  }

  private async drain(all: boolean): Promise<void> {
    while (this.pending.size >= this.options.batchSize || (all && this.pending.size > 0)) await this.writeBatch();
    if (this.dropped > 0) {
      this.options.onDropped(this.dropped);
      this.dropped = 0;
    }
  }

  /** Takes the oldest `batchSize` pending uses and writes them in one statement. */
  private async writeBatch(): Promise<void> {
    const batch: Array<[string, number]> = [];
    for (const entry of this.pending) {
      batch.push(entry);
      if (batch.length === this.options.batchSize) break;
    }
    for (const [id] of batch) this.pending.delete(id);
    // In id order: two replicas writing overlapping batches take the row locks in the same order.
    batch.sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
    const ids = batch.map(([id]) => id);
    this.writing = new Set(ids);
    try {
      await this.write(ids, batch.map(([, t]) => new Date(t)));
    } catch (err) {
      this.options.onDropped(batch.length, err);
    } finally {
      this.writing = new Set();
    }
  }
}
