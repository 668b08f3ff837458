import type { DatabaseConfig } from "../config.js";
import { openHotPool } from "./hot-pool.js";
import type { PoolStats } from "./pool-stats.js";
import { asBuffer, type SessionHead } from "./session-entity.js";
import { DatabaseUnavailableError, isUnavailable } from "./session-repository.js";

/**
 * The GetToken read path: one primary-key lookup of a narrow row (no refresh
 * token), on a prepared statement, with no ORM unit of work. Everything else
 * goes through SessionRepository.
 */
export interface SessionReader {
  /** The session if it has this id and belongs to this user: one query for both checks. */
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

/** PostgreSQL: a small pool of its own with named (server-side prepared) statements. */
class PgSessionReader implements SessionReader {
  private constructor(private readonly pool: import("pg").Pool) {}

  static async open(url: string): Promise<PgSessionReader> {
    return new PgSessionReader(await openHotPool(url, "token-service-read", 10));
  }

  private async one(name: string, text: string, values: unknown[]): Promise<SessionHead | null> {
    try {
      const res = await this.pool.query<RawRow>({ name, text, values });
      return toHead(res.rows[0]);
    } catch (err) {
      if (isUnavailable(err)) throw new DatabaseUnavailableError(err);
      throw err;
    }
  }

  findForUser(id: string, userId: string) {
    return this.one("ts_session_by_id", BY_ID, [id, userId]);
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
  return db.kind === "sqlite" ? SqliteSessionReader.open(db.path) : PgSessionReader.open(db.url);
}
