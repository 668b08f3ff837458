import { randomBytes } from "node:crypto";
import type { EntityManager, FilterQuery, MikroORM } from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/knex";
import type { EventCursor, EventFilter, NewEvent, StoredEvent } from "../events/types.js";
import { EventHorizonSchema, EventSchema, type EventRow } from "./event-entity.js";
import { CHANNEL } from "./pg-channel.js";
import { runOn } from "./session-repository.js";

/** The NOTIFY payload (on the change channel) that says new events were committed. */
export const EVENTS_MESSAGE = "events";

/**
 * Key of the transaction-scoped advisory lock taken right before events are
 * inserted: it makes cursors (the bigserial `seq`) grow in commit order.
 */
const EVENT_ORDER_LOCK_KEY = 0x65766e74; // "evnt"

/** A cursor older than what the sweeper already purged: events after it may be gone. */
export class EventCursorExpiredError extends Error {
  override name = "EventCursorExpiredError";
  readonly code = "CURSOR_EXPIRED";
  constructor(
    readonly cursor: EventCursor,
    /** The oldest cursor still valid. */
    readonly horizon: EventCursor,
  ) {
    super(`cursor ${cursor} is older than the retention (oldest valid cursor ${horizon})`);
  }
}

/** One read of the outbox: the matching events in cursor order, and where the next read starts. */
export interface EventPage {
  events: StoredEvent[];
  /**
   * Pass this as the cursor of the next read. It is at least the last event's
   * cursor, and may be further: events up to it that did not match the filter
   * were skipped.
   */
  next: EventCursor;
}

function stored(row: EventRow): StoredEvent {
  return {
    id: row.id,
    cursor: Number(row.seq),
    kind: row.kind as StoredEvent["kind"],
    provider: row.provider,
    userId: row.userId,
    sessionId: row.sessionId,
    reason: row.reason,
    detail: row.detail ? (JSON.parse(row.detail) as StoredEvent["detail"]) : null,
    createdAt: row.createdAt,
  };
}

function whereOf(after: EventCursor, upTo: EventCursor, filter: EventFilter): FilterQuery<EventRow> {
  const where: FilterQuery<EventRow> & Record<string, unknown> = { seq: { $gt: after, $lte: upTo } };
  if (filter.kinds && filter.kinds.length > 0) where.kind = { $in: [...filter.kinds] };
  if (filter.providers) where.provider = { $in: [...filter.providers] };
  if (filter.userId !== undefined) where.userId = filter.userId;
  return where;
}

/**
 * The outbox (docs/connection-health.md#events): events are appended inside
 * the transaction of the change that causes them, and read back in cursor
 * (= commit) order. On PostgreSQL every appending transaction ends with an
 * advisory lock and a NOTIFY; SQLite has a single writer.
 */
export class EventRepository {
  private readonly appended = new Set<() => void>();

  private readonly dialect: "sqlite" | "postgresql";

  constructor(
    private readonly orm: MikroORM,
    dialect?: "sqlite" | "postgresql",
  ) {
    this.dialect = dialect ?? (orm.config.getDriver().constructor.name.startsWith("PostgreSql") ? "postgresql" : "sqlite");
  }

  /** Calls `listener` in this process after a transaction that appended events committed. Returns an unsubscribe. */
  onAppended(listener: () => void): () => void {
    this.appended.add(listener);
    return () => this.appended.delete(listener);
  }

  /**
   * Runs `fn` in a transaction and appends the events it returns as the
   * transaction's last statements, so the events commit exactly when the
   * change does. Returns fn's result.
   */
  async transactional<T>(fn: (tx: EntityManager) => Promise<{ result: T; events: NewEvent[] }>): Promise<T> {
    let count = 0;
    const result = await runOn(this.orm, (em) =>
      em.transactional(async (tx) => {
        const out = await fn(tx);
        count = out.events.length;
        await this.appendIn(tx, out.events);
        return out.result;
      }),
    );
    if (count > 0) this.wakeLocal();
    return result;
  }

  /** Appends events in a transaction of their own (a change that is not a database write). */
  append(events: NewEvent[]): Promise<void> {
    return this.transactional(async () => ({ result: undefined, events }));
  }

  /**
   * Inserts events inside `tx`; must be the last statements of that
   * transaction (the order lock is held until commit). Prefer transactional().
   */
  async appendIn(tx: EntityManager, events: readonly NewEvent[]): Promise<void> {
    if (events.length === 0) return;
    const sql = tx as SqlEntityManager;
    if (this.dialect === "postgresql") await sql.execute("select pg_advisory_xact_lock(?)", [EVENT_ORDER_LOCK_KEY]);
    const now = new Date();
    for (const e of events) {
      await tx.insert(EventSchema, {
        id: `evt_${randomBytes(16).toString("base64url")}`,
        kind: e.kind,
        provider: e.provider,
        userId: e.userId,
        sessionId: e.sessionId,
        reason: e.reason,
        detail: e.detail ? JSON.stringify(e.detail) : null,
        createdAt: now,
      } as EventRow);
    }
    if (this.dialect === "postgresql") await sql.execute("select pg_notify(?, ?)", [CHANNEL, EVENTS_MESSAGE]);
  }

  /** Wakes this process's listeners (onAppended). */
  wakeLocal(): void {
    for (const l of this.appended) {
      try {
        l();
      } catch {
        // A listener's failure is its own.
      }
    }
  }

  /**
   * Committed events after `cursor` that match `filter`, at most `limit`, in
   * cursor order. Throws EventCursorExpiredError when events after `cursor`
   * were already purged.
   */
  async readAfter(cursor: EventCursor, filter: EventFilter, limit: number): Promise<EventPage> {
    return runOn(this.orm, async (em) => {
      // The newest committed cursor first: with cursors in commit order,
      // everything up to it has committed, so skipping non-matching rows up to it loses nothing.
      const top = await this.latestOn(em);
      let page: EventPage = { events: [], next: Math.max(cursor, top) };
      if (top > cursor) {
        const rows = await em.find(EventSchema, whereOf(cursor, top, filter), {
          orderBy: { seq: "asc" },
          limit,
          disableIdentityMap: true,
        });
        const events = rows.map(stored);
        page = { events, next: events.length === limit ? events[events.length - 1]!.cursor : top };
      }
      const horizon = await this.horizonOn(em);
      if (cursor < horizon) throw new EventCursorExpiredError(cursor, horizon);
      return page;
    });
  }

  /** The newest committed cursor (0 when the outbox is empty): where a reader that wants only new events starts. */
  latest(): Promise<EventCursor> {
    return runOn(this.orm, (em) => this.latestOn(em));
  }

  /**
   * Where a reader that wants the events made from `since` on starts: just
   * before the first event created at or after it (events of a moment
   * earlier that committed later may come along: never fewer), or the newest
   * cursor when there is none yet.
   */
  cursorSince(since: Date): Promise<EventCursor> {
    return runOn(this.orm, async (em) => {
      const first = await em.findOne(EventSchema, { createdAt: { $gte: since } }, { orderBy: { seq: "asc" }, fields: ["seq"], disableIdentityMap: true });
      return first ? Number(first.seq) - 1 : this.latestOn(em);
    });
  }

  /** The oldest valid cursor: every event after it is still stored. */
  horizon(): Promise<EventCursor> {
    return runOn(this.orm, (em) => this.horizonOn(em));
  }

  private async latestOn(em: EntityManager): Promise<EventCursor> {
    const rows = (await (em as SqlEntityManager).execute("select max(seq) as top from events")) as Array<{ top: unknown }>;
    const top = rows[0]?.top;
    return top === null || top === undefined ? 0 : Number(top);
  }

  private async horizonOn(em: EntityManager): Promise<EventCursor> {
    const row = await em.findOne(EventHorizonSchema, { id: 1 }, { disableIdentityMap: true });
    return row ? Number(row.throughSeq) : 0;
  }

  /**
   * Deletes up to `limit` events created before `before` (the retention) and
   * raises the horizon past them, in one transaction; returns how many.
   */
  async purge(before: Date, limit: number): Promise<number> {
    return runOn(this.orm, (em) =>
      em.transactional(async (tx) => {
        const rows = await tx.find(EventSchema, { createdAt: { $lt: before } }, {
          fields: ["seq"],
          orderBy: { seq: "asc" },
          limit,
          disableIdentityMap: true,
        });
        if (rows.length === 0) return 0;
        const seqs = rows.map((r) => Number(r.seq));
        const through = Math.max(...seqs);
        const n = await tx.nativeDelete(EventSchema, { seq: { $in: seqs } });
        await tx.nativeUpdate(EventHorizonSchema, { id: 1, throughSeq: { $lt: through } }, { throughSeq: through });
        return n;
      }),
    );
  }
}
