/** Where a LookupBatcher reads from: rows by primary key, each owned by a user. */
export interface BatchedSource<R, T> {
  /** One id for one user, one statement for both checks: a lone read, as before batching. */
  one(id: string, userId: string): Promise<T | null>;
  /** The rows of these ids (distinct), whoever owns them, in one statement. */
  many(ids: string[]): Promise<R[]>;
  idOf(row: R): string;
  userOf(row: R): string;
  /** The answer made from a row (one per caller: answers are not shared between callers). */
  toResult(row: R): T;
}

interface Waiter<T> {
  userId: string;
  resolve(value: T | null): void;
  reject(err: unknown): void;
}

/**
 * Turns the primary-key reads asked for in one event-loop turn into one
 * statement: `read` only notes the id and its caller, and the batch is sent
 * on `setImmediate` (at once when it holds `maxIds` distinct ids). Each
 * caller gets its row only if the row belongs to its user, else null, as a
 * lookup by id and user would answer (a wrong user and an unknown id look
 * the same). An id asked for twice in a batch is read once. A batch of one
 * id for one caller goes through `one`, so a quiet service's reads are
 * what they were. When the statement fails, every caller of its batch gets
 * that error.
 */
export class LookupBatcher<R, T> {
  /** Distinct ids of the batch being collected → their callers (one, or several for a repeated id). */
  private pending = new Map<string, Waiter<T> | Array<Waiter<T>>>();
  private scheduled = false;

  constructor(
    private readonly source: BatchedSource<R, T>,
    private readonly maxIds: number,
  ) {}

  /** The row with this id if it belongs to this user, else null; read with the others asked for in this turn. */
  read(id: string, userId: string): Promise<T | null> {
    return new Promise<T | null>((resolve, reject) => {
      const waiter: Waiter<T> = { userId, resolve, reject };
      const held = this.pending.get(id);
      if (held === undefined) this.pending.set(id, waiter);
      else if (Array.isArray(held)) held.push(waiter);
      else this.pending.set(id, [held, waiter]);
      if (this.pending.size >= this.maxIds) this.flush();
      else if (!this.scheduled) {
        this.scheduled = true;
        setImmediate(this.flushScheduled);
      }
    });
  }

  private readonly flushScheduled = (): void => {
    this.scheduled = false;
    this.flush();
  };

  /** Sends the batch collected so far. */
  private flush(): void {
    const batch = this.pending;
    if (batch.size === 0) return;
    this.pending = new Map();
    if (batch.size === 1) {
      const [id, held] = batch.entries().next().value as [string, Waiter<T> | Array<Waiter<T>>];
      if (!Array.isArray(held)) {
        this.source.one(id, held.userId).then(held.resolve, held.reject);
        return;
      }
    }
    this.source.many([...batch.keys()]).then(
      (rows) => {
        for (const row of rows) {
          const id = this.source.idOf(row);
          const held = batch.get(id);
          if (held === undefined) continue;
          batch.delete(id);
          const owner = this.source.userOf(row);
          settle(held, (w) => {
            // A row that cannot be read fails its own callers, not the batch.
            try {
              w.resolve(owner === w.userId ? this.source.toResult(row) : null);
            } catch (err) {
              w.reject(err);
            }
          });
        }
        // No row: an unknown id.
        for (const held of batch.values()) settle(held, (w) => w.resolve(null));
      },
      (err: unknown) => {
        for (const held of batch.values()) settle(held, (w) => w.reject(err));
      },
    );
  }
}

function settle<T>(held: Waiter<T> | Array<Waiter<T>>, f: (w: Waiter<T>) => void): void {
  if (Array.isArray(held)) for (const w of held) f(w);
  else f(held);
}
