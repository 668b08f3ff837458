import type { DatabaseConfig } from "../config.js";
import { openHotPool } from "./hot-pool.js";
import { LookupBatcher } from "./lookup-batcher.js";
import type { PoolStats } from "./pool-stats.js";
import { asBuffer, type SessionHead } from "./session-entity.js";
import { DatabaseUnavailableError, isUnavailable } from "./session-repository.js";

/**
 * The GetToken read path: primary-key lookups of a narrow row (no refresh
 * token), on prepared statements, with no ORM unit of work (on PostgreSQL,
 * the lookups of one event-loop turn in one statement). Everything else goes
 * through SessionRepository.
 */
export interface SessionReader {
  /**
   * The session if it has this id and belongs to this user (a wrong user gets
   * null, as an unknown id does). PostgreSQL reads the calls of one
   * event-loop turn together.
   */
  findForUser(id: string, userId: string): Promise<SessionHead | null>;
  /** The user's newest session at a provider, active ones first. */
  findNewest(userId: string, provider: string): Promise<SessionHead | null>;
  /** Its connections, for metrics (SQLite: one, never waited for). */
  poolStats(): PoolStats;
  close(): Promise<void>;
}

const HEAD_COLUMNS =
  "id, user_id, provider, status, key_id, access_ct, id_ct, (refresh_ct is not null) as refreshable, token_type, scope, " +
  "access_expires_at, access_issued_at, id_expires_at, last_used_at, version, reauth_reason, lease_owner, lease_until, resources";

const BY_ID = `select ${HEAD_COLUMNS} from sessions where id = $1 and user_id = $2`;
/** PostgreSQL: the cache misses of one event-loop turn, read together (each caller's user is checked on its row). */
const BY_IDS = `select ${HEAD_COLUMNS} from sessions where id = any($1::text[])`;
/** Most distinct ids in one batched read. */
export const MAX_BATCH_IDS = 64;
const NEWEST =
  `select ${HEAD_COLUMNS} from sessions where user_id = $1 and provider = $2 ` +
  "order by case when status = 'active' then 0 else 1 end, created_at desc limit 1";

type RawRow = Record<string, unknown>;

function toDate(v: unknown): Date | null {
  if (v === null || v === undefined) return null;
  if (v instanceof Date) return v;
  return new Date(typeof v === "string" && /^\d+$/.test(v) ? Number(v) : (v as number | string));
}

function toHead(r: RawRow | undefined): SessionHead | null {
  if (!r) return null;
  return {
    id: r.id as string,
    userId: r.user_id as string,
    provider: r.provider as string,
    status: r.status as SessionHead["status"],
    keyId: r.key_id as string,
    accessCt: asBuffer(r.access_ct) as Buffer,
    idCt: asBuffer(r.id_ct),
    refreshable: r.refreshable === true || r.refreshable === 1 || r.refreshable === 1n,
    tokenType: r.token_type as string,
    scope: r.scope as string,
    accessExpiresAt: toDate(r.access_expires_at) as Date,
    accessIssuedAt: toDate(r.access_issued_at) as Date,
    idExpiresAt: toDate(r.id_expires_at),
    lastUsedAt: toDate(r.last_used_at) as Date,
    version: Number(r.version),
    reauthReason: (r.reauth_reason as string | null) ?? null,
    leaseOwner: (r.lease_owner as string | null) ?? null,
    leaseUntil: toDate(r.lease_until),
    resources: (r.resources as string | null) ?? null,
  };
}

/**
 * PostgreSQL: a small pool of its own with named (server-side prepared)
 * statements. The `findForUser` calls of one event-loop turn share one
 * statement (LookupBatcher): under load most GetToken calls miss the cache,
 * and one query per call cost a round trip, its syscalls and its parsing
 * each. A lone call is today's single-row lookup.
 */
class PgSessionReader implements SessionReader {
  private readonly batcher: LookupBatcher<RawRow, SessionHead>;

  constructor(private readonly pool: import("pg").Pool) {
    this.batcher = new LookupBatcher<RawRow, SessionHead>(
      {
        one: (id, userId) => this.one("ts_session_by_id", BY_ID, [id, userId]),
        many: (ids) => this.rows("ts_sessions_by_ids", BY_IDS, [ids]),
        idOf: (row) => row.id as string,
        userOf: (row) => row.user_id as string,
        toResult: (row) => toHead(row) as SessionHead,
      },
      MAX_BATCH_IDS,
    );
  }

  /** The rows of a statement; an outage becomes DatabaseUnavailableError. */
  private async rows(name: string, text: string, values: unknown[]): Promise<RawRow[]> {
    try {
      return (await this.pool.query<RawRow>({ name, text, values })).rows;
    } catch (err) {
      if (isUnavailable(err)) throw new DatabaseUnavailableError(err);
      throw err;
    }
  }

  private async one(name: string, text: string, values: unknown[]): Promise<SessionHead | null> {
    return toHead((await this.rows(name, text, values))[0]);
  }

  findForUser(id: string, userId: string) {
    return this.batcher.read(id, userId);
  }

  findNewest(userId: string, provider: string) {
    return this.one("ts_session_newest", NEWEST, [userId, provider]);
  }

  poolStats(): PoolStats {
    return { used: this.pool.totalCount - this.pool.idleCount, idle: this.pool.idleCount, waiting: this.pool.waitingCount };
  }

  async close(): Promise<void> {
    await this.pool.end();
  }
}

interface LibsqlStatement {
  get(...params: unknown[]): unknown;
}
interface LibsqlDatabase {
  prepare(sql: string): LibsqlStatement;
  exec(sql: string): unknown;
  close(): void;
}

/**
 * SQLite: its own read connection to the file (WAL lets it read while the ORM
 * writes) with statements prepared once. The driver is synchronous, and a
 * primary-key lookup takes microseconds.
 */
class SqliteSessionReader implements SessionReader {
  private readonly byId: LibsqlStatement;
  private readonly newest: LibsqlStatement;

  private constructor(private readonly db: LibsqlDatabase) {
    db.exec("pragma busy_timeout = 5000;");
    this.byId = db.prepare(BY_ID.replace(/\$\d/g, "?"));
    this.newest = db.prepare(NEWEST.replace(/\$\d/g, "?"));
  }

  static async open(path: string): Promise<SqliteSessionReader> {
    const { default: Database } = (await import("libsql")) as unknown as { default: new (path: string) => LibsqlDatabase };
    return new SqliteSessionReader(new Database(path));
  }

  private one(stmt: LibsqlStatement, params: unknown[]): Promise<SessionHead | null> {
    try {
      return Promise.resolve(toHead(stmt.get(...params) as RawRow | undefined));
    } catch (err) {
      if (isUnavailable(err)) return Promise.reject(new DatabaseUnavailableError(err));
      return Promise.reject(err);
    }
  }

  findForUser(id: string, userId: string) {
    return this.one(this.byId, [id, userId]);
  }

  findNewest(userId: string, provider: string) {
    return this.one(this.newest, [userId, provider]);
  }

  poolStats(): PoolStats {
    return { used: 0, idle: 1, waiting: 0 };
  }

  async close(): Promise<void> {
    this.db.close();
  }
}

/** Opens the reader for the configured database (after migrations have created the table). */
export function openSessionReader(db: DatabaseConfig): Promise<SessionReader> {
  if (db.kind === "sqlite") return SqliteSessionReader.open(db.path);
  return openHotPool(db.url, "token-service-read", 10).then(pgSessionReader);
}

/** The PostgreSQL reader over a pool (closed with the reader): openSessionReader's, or a test's. */
export function pgSessionReader(pool: import("pg").Pool): SessionReader {
  return new PgSessionReader(pool);
}
