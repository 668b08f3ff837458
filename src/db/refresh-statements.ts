import { openHotPool } from "./hot-pool.js";
import type { SessionRow } from "./session-entity.js";

/**
 * The refresh path's single statements on PostgreSQL, as the read path's
 * (session-reader.ts): named (server-side prepared) statements through `pg`
 * on a small pool of their own, with no ORM unit of work, query builder or
 * entity hydration. Only single statements live here: a write that changes a
 * session's status and appends an event stays a transaction in
 * SessionRepository (on the ORM), so its event commits with it. The
 * batched last_used_at write of GetToken (touchMany) shares the pool: one
 * statement about once a second.
 */

type Raw = Record<string, unknown>;

/** A NOTIFY for a write to send when it commits (see RowWaiter.changeNotice). */
export interface ChangeNotice {
  channel: string;
  message: string;
}

/** Column name → field name, computed once per column. */
const fieldOf = new Map<string, string>();
const camel = (column: string) => {
  let field = fieldOf.get(column);
  if (field === undefined) {
    field = column.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
    fieldOf.set(column, field);
  }
  return field;
};
const snake = (field: string) => field.replace(/[A-Z]/g, (c) => `_${c.toLowerCase()}`);

/** A whole row as the ORM would hydrate it (pg already returns Dates, Buffers and numbers for these column types). */
function toRow(r: Raw | undefined): SessionRow | null {
  if (!r) return null;
  const row: Raw = {};
  for (const k in r) row[camel(k)] = r[k];
  return row as unknown as SessionRow;
}

const LEASE =
  "update sessions set lease_owner = $3, lease_until = $4 " +
  "where id = $1 and version = $2 and status = 'active' and (lease_until is null or lease_until < $5) returning *";
const BY_ID = "select * from sessions where id = $1";
const RELEASE_CLEAN = "update sessions set lease_owner = null, lease_until = null where id = $1 and lease_owner = $2";
const RELEASE_AGAIN =
  "update sessions set lease_owner = null, lease_until = null, last_error_code = $3, last_error_at = $4, " +
  "refresh_failures = refresh_failures + 1 where id = $1 and lease_owner = $2 and refresh_failures > 0";
const NOTIFY = "select pg_notify($1, $2)";
/**
 * A batch of uses, each id with its own time, never moving last_used_at
 * backwards. The rows are locked in id order first (ORDER BY … FOR UPDATE),
 * so two replicas writing overlapping batches cannot deadlock.
 */
const TOUCH =
  "update sessions s set last_used_at = v.at from (" +
  "select t.id, t.at from unnest($1::text[], $2::timestamptz[]) as t(id, at) join sessions x on x.id = t.id " +
  "where x.last_used_at is null or x.last_used_at < t.at order by t.id for update of x) v " +
  "where s.id = v.id and (s.last_used_at is null or s.last_used_at < v.at)";

export class PgRefreshStatements {
  /** Statement text of each shape of token write, by its field list, and its name. */
  private readonly writes = new Map<string, { name: string; text: string; fields: string[] }>();

  private constructor(private readonly pool: import("pg").Pool) {}

  static async open(url: string): Promise<PgRefreshStatements> {
    // Opened on first use, also by repositories that tests and the CLI make without closing: idle, it lets the process exit.
    return new PgRefreshStatements(await openHotPool(url, "token-service-refresh", 4, true));
  }

  private async query(name: string, text: string, values: unknown[]): Promise<{ rows: Raw[]; rowCount: number }> {
    const res = await this.pool.query<Raw>({ name, text, values });
    return { rows: res.rows, rowCount: res.rowCount ?? 0 };
  }

  async acquireLease(id: string, version: number, owner: string, now: Date, until: Date): Promise<SessionRow | null> {
    return toRow((await this.query("ts_refresh_lease", LEASE, [id, version, owner, until, now])).rows[0]);
  }

  async findById(id: string): Promise<SessionRow | null> {
    return toRow((await this.query("ts_refresh_by_id", BY_ID, [id])).rows[0]);
  }

  /**
   * The compare-and-set write of new tokens on a session that was not
   * failing: `set` where id, version and lease owner hold and
   * refresh_failures = 0. Returns the rows written (0 or 1). With `notice`,
   * the same statement sends that NOTIFY when it wrote the row (delivered at
   * its commit, as the write is).
   */
  async writeTokens(id: string, version: number, owner: string, set: Record<string, unknown>, notice?: ChangeNotice): Promise<number> {
    // Fields left undefined are not written (as the ORM's nativeUpdate leaves them).
    const fields = Object.keys(set).filter((f) => set[f] !== undefined);
    const key = `${notice ? "notify:" : ""}${fields.join(",")}`;
    let stmt = this.writes.get(key);
    if (!stmt) {
      const update =
        `update sessions set ${fields.map((f, i) => `${snake(f)} = $${i + 4}`).join(", ")} ` +
        "where id = $1 and version = $2 and lease_owner = $3 and refresh_failures = 0";
      const n = fields.length + 4;
      const text = notice ? `with w as (${update} returning 1) select pg_notify($${n}, $${n + 1}) from w` : update;
      stmt = { name: `ts_refresh_write_${this.writes.size}`, text, fields };
      this.writes.set(key, stmt);
    }
    const values = [id, version, owner, ...fields.map((f) => set[f])];
    if (notice) values.push(notice.channel, notice.message);
    return (await this.query(stmt.name, stmt.text, values)).rowCount;
  }

  async releaseLeaseClean(id: string, owner: string): Promise<boolean> {
    return (await this.query("ts_refresh_release_clean", RELEASE_CLEAN, [id, owner])).rowCount === 1;
  }

  /** A failure after the first of a run: counted, in one statement (the first one appends an event: not here). */
  async releaseLeaseAgain(id: string, owner: string, errorCode: string, now: Date): Promise<boolean> {
    return (await this.query("ts_refresh_release_again", RELEASE_AGAIN, [id, owner, errorCode, now])).rowCount === 1;
  }

  /** Sets each session's last_used_at to its time unless it is later already; returns the rows written. */
  async touchMany(ids: string[], times: Date[]): Promise<number> {
    return (await this.query("ts_touch_many", TOUCH, [ids, times])).rowCount;
  }

  async notify(channel: string, message: string): Promise<void> {
    await this.query("ts_notify", NOTIFY, [channel, message]);
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}
