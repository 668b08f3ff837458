/** The consumer went away: a message pushed now will never be read. */
export class QueueClosedError extends Error {
  override name = "QueueClosedError";
}

/**
 * A one-slot hand-over from a producer (a stream handler's `send`) to an
 * async iterator (connect-node's generator): push resolves when the message
 * was taken, so the producer runs no further ahead than the consumer; end,
 * fail and close settle whatever is waiting.
 */
export class MessageQueue<T> implements AsyncIterable<T> {
  private slot: { message: T; taken: () => void; lost: (err: Error) => void } | undefined;
  private outcome: { error?: unknown } | undefined;
  private closed = false;
  private wakeConsumer: (() => void) | undefined;

  push(message: T): Promise<void> {
    if (this.closed || this.outcome) return Promise.reject(new QueueClosedError("the stream is closed"));
    if (this.slot) return Promise.reject(new Error("push before the previous message was taken"));
    return new Promise<void>((taken, lost) => {
      this.slot = { message, taken, lost };
      this.notify();
    });
  }

  /** The producer finished: the iterator ends after the last message. */
  end(): void {
    this.outcome ??= {};
    this.notify();
  }

  /** The producer failed: the iterator throws `error` after the last message. */
  fail(error: unknown): void {
    this.outcome ??= { error };
    this.notify();
  }

  /** The consumer went away: a waiting push rejects, and every later one. */
  close(): void {
    this.closed = true;
    this.slot?.lost(new QueueClosedError("the stream is closed"));
    this.slot = undefined;
    this.notify();
  }

  private notify(): void {
    const wake = this.wakeConsumer;
    this.wakeConsumer = undefined;
    wake?.();
  }

  async *[Symbol.asyncIterator](): AsyncIterator<T> {
    for (;;) {
      if (this.slot) {
        const { message, taken } = this.slot;
        this.slot = undefined;
        taken();
        yield message;
        continue;
      }
      if (this.outcome) {
        if ("error" in this.outcome) throw this.outcome.error;
        return;
      }
      if (this.closed) return;
      await new Promise<void>((resolve) => (this.wakeConsumer = resolve));
    }
  }
}
