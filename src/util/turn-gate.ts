/**
 * Lets at most `perTurn` waiters go on per event-loop turn; the rest go on in
 * later turns, in the order they came.
 *
 * Callers that share one refresh all wake in the same microtask run when it
 * settles. Each then writes its answer, and node:http2 sends what was written
 * only once the loop turns, so without a gate the first caller's answer waits
 * on the socket until every one of the (say) 333 answers has been built. With
 * the gate, each turn's answers leave while the next turn's are being built,
 * and the callers' side can read them meanwhile. The work is the same; it
 * just stops holding the first answers back.
 */
export class TurnGate {
  private passedThisTurn = 0;
  /** Held waiters from `head` on (an index, so that a turn does not shift the whole array). */
  private queue: Array<() => void> = [];
  private head = 0;
  private turnScheduled = false;

  constructor(private readonly perTurn: number) {
    if (!Number.isInteger(perTurn) || perTurn < 1) throw new RangeError("perTurn must be a positive integer");
  }

  /** Settles like `work`, once the gate lets this waiter go on. */
  through<T>(work: Promise<T>): Promise<T> {
    return work.then(
      (v) => this.pass().then(() => v),
      (e: unknown) => this.pass().then(() => Promise.reject(e)),
    );
  }

  /** Resolves in this turn while it has room, else in a later one. */
  pass(): Promise<void> {
    if (this.held === 0 && this.passedThisTurn < this.perTurn) {
      this.passedThisTurn++;
      this.scheduleTurn();
      return Promise.resolve();
    }
    return new Promise<void>((resolve) => {
      this.queue.push(resolve);
      this.scheduleTurn();
    });
  }

  /** Waiters held for a later turn (for tests). */
  get held(): number {
    return this.queue.length - this.head;
  }

  private scheduleTurn(): void {
    if (this.turnScheduled) return;
    this.turnScheduled = true;
    setImmediate(() => {
      this.turnScheduled = false;
      const end = Math.min(this.queue.length, this.head + this.perTurn);
      this.passedThisTurn = end - this.head;
      for (; this.head < end; this.head++) this.queue[this.head]!();
      if (this.head === this.queue.length || (this.head >= 1024 && this.head * 2 >= this.queue.length)) {
        // Drop the waiters already let go: at once when none is left, else once they are half the array.
        this.queue = this.queue.slice(this.head);
        this.head = 0;
      }
      if (this.held > 0 || this.passedThisTurn > 0) this.scheduleTurn();
    });
  }
}
