import { LockMode, type EntityManager, type FilterQuery, type MikroORM } from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/knex";
import { LogoutTokenSchema, type LogoutTokenRow } from "./provider-entity.js";
import { asBuffer, SessionSchema, type SessionRow } from "./session-entity.js";

/** The new token state written by a successful refresh. */
export type RefreshedFields = Pick<
  SessionRow,
  | "keyId"
  | "accessCt"
  | "refreshCt"
  | "idCt"
  | "tokenType"
  | "scope"
  | "accessExpiresAt"
  | "accessIssuedAt"
  | "idExpiresAt"
  | "refreshExpiresAt"
  | "refreshAt"
  | "keepAliveAt"
>;

/** What the background refresher claims: the due sessions of one provider, within the cluster-wide bound. */
export interface ClaimQuery {
  provider: string;
  now: Date;
  /** The lease written on every row claimed. */
  owner: string;
  until: Date;
  /** Most rows to claim. */
  limit: number;
  /** Live leases of this provider over all replicas (claimed here or not) are kept at or below this. */
  clusterLimit: number;
  /** A recently used session (read since then) is due at its refresh_at (legacy rows: access expiry before `horizon`). */
  usedSince: Date;
  horizon: Date;
  /** Sessions whose last refresh failed after this are left alone. */
  failedBefore: Date;
  /** Keep-alive on: rows not yet scheduled are due when their last token was written before this; null: keep-alive off. */
  keepAliveIssuedBefore: Date | null;
  /** Sessions created before this are past their absolute lifetime (null: none). */
  createdAfter: Date | null;
}

/** The database could not be reached or did not answer in time. */
export class DatabaseUnavailableError extends Error {
  override name = "DatabaseUnavailableError";
  constructor(cause: unknown) {
    super("database unavailable", { cause });
  }
}

const CONNECTION_ERROR_CODES = new Set([
  "ECONNREFUSED",
  "ECONNRESET",
  "ETIMEDOUT",
  "EPIPE",
  "ENOTFOUND",
  "EHOSTUNREACH",
  "57P01", // admin_shutdown
  "57P02", // crash_shutdown
  "57P03", // cannot_connect_now
  "57014", // query_canceled (statement_timeout)
  "53300", // too_many_connections
  "08000",
  "08003",
  "08006",
  "08001",
  "08004",
  "SQLITE_BUSY",
]);

/** Whether an error means the database is unreachable or too slow (as opposed to a bug). */
export function isUnavailable(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const x = e as { code?: unknown; name?: unknown; message?: unknown; cause?: unknown };
    if (typeof x.code === "string" && CONNECTION_ERROR_CODES.has(x.code)) return true;
    if (x.name === "KnexTimeoutError" || x.name === "TimeoutError") return true;
    if (typeof x.message === "string" && /Connection terminated|timeout exceeded|Timeout acquiring a connection/i.test(x.message)) {
      return true;
    }
    e = x.cause;
  }
  return false;
}

/**
 * Runs `fn` on a fresh EntityManager fork (no unit of work shared between
 * calls), turning an outage into DatabaseUnavailableError.
 */
export async function runOn<T>(orm: MikroORM, fn: (em: EntityManager) => Promise<T>): Promise<T> {
  try {
    return await fn(orm.em.fork({ clear: true, useContext: false }));
  } catch (err) {
    if (isUnavailable(err)) throw new DatabaseUnavailableError(err);
    throw err;
  }
}

/** Whether an error is a primary-key or unique-constraint violation. */
export function isUniqueViolation(err: unknown): boolean {
  for (let e: unknown = err, depth = 0; e && depth < 5; depth++) {
    const x = e as { code?: unknown; name?: unknown; message?: unknown; cause?: unknown };
    if (x.code === "23505" || x.name === "UniqueConstraintViolationException") return true;
    if (typeof x.message === "string" && /UNIQUE constraint failed|SQLITE_CONSTRAINT_PRIMARYKEY/.test(x.message)) return true;
    e = x.cause;
  }
  return false;
}

/** What every write of new tokens sets besides them: the next version, and the lease and last failure cleared. */
export function tokensWritten(version: number, now: Date) {
  return { version: version + 1, updatedAt: now, leaseOwner: null, leaseUntil: null, lastErrorCode: null, lastErrorAt: null };
}

/** Rows leave here with Buffers, whatever the driver returned (see asBuffer). */
function normalize(row: SessionRow | null): SessionRow | null {
  if (!row) return null;
  row.accessCt = asBuffer(row.accessCt) as Buffer;
  row.refreshCt = asBuffer(row.refreshCt);
  row.idCt = asBuffer(row.idCt);
  return row;
}

/** Deletes the matching rows, each as it was when deleted (a compare-and-set on its version, as deleteForUser). */
async function deleteAllOn(em: EntityManager, where: FilterQuery<SessionRow>): Promise<SessionRow[]> {
  const deleted: SessionRow[] = [];
  for (;;) {
    const rows = (await em.find(SessionSchema, where, { disableIdentityMap: true })).map((r) => normalize(r) as SessionRow);
    if (rows.length === 0) return deleted;
    for (const row of rows) {
      if ((await em.nativeDelete(SessionSchema, { id: row.id, version: row.version })) === 1) deleted.push(row);
    }
  }
}

/**
 * All SQL about sessions. Every method opens a fresh EntityManager fork, so no
 * unit of work is shared between requests, and every write that races another
 * replica is a conditional update that reports whether it won.
 */
export class SessionRepository {
  constructor(
    private readonly orm: MikroORM,
    private readonly dialect: "sqlite" | "postgresql" = "sqlite",
  ) {}

  private run<T>(fn: (em: EntityManager) => Promise<T>): Promise<T> {
    return runOn(this.orm, fn);
  }

  /** Inserts a new session. */
  async insert(row: SessionRow): Promise<void> {
    await this.run((em) => em.insert(SessionSchema, row));
  }

  async findById(id: string): Promise<SessionRow | null> {
    return this.run(async (em) => normalize(await em.findOne(SessionSchema, { id }, { disableIdentityMap: true })));
  }

  /**
   * Takes the refresh lease when the row is still at `version` and no live
   * lease is held (a lapsed one is taken over). Returns the whole row as
   * leased, or null when the lease was not taken: one round trip, which
   * matters in a storm, when every round trip waits behind a busy event loop.
   */
  async acquireLease(id: string, version: number, owner: string, now: Date, until: Date): Promise<SessionRow | null> {
    const where: FilterQuery<SessionRow> = {
      id,
      version,
      status: "active",
      $or: [{ leaseUntil: null }, { leaseUntil: { $lt: now } }],
    };
    return this.run(async (em) => {
      const rows = await (em as SqlEntityManager)
        .createQueryBuilder(SessionSchema)
        .update({ leaseOwner: owner, leaseUntil: until })
        .where(where)
        .returning("*")
        .execute<SessionRow[]>("all", true);
      return normalize(rows[0] ?? null);
    });
  }

  /** Writes refreshed tokens if this owner still holds the lease on `version`. */
  async completeRefresh(id: string, owner: string, version: number, fields: RefreshedFields, now: Date): Promise<boolean> {
    return this.run(
      async (em) =>
        (await em.nativeUpdate(
          SessionSchema,
          { id, version, leaseOwner: owner },
          { ...fields, ...tokensWritten(version, now) },
        )) === 1,
    );
  }

  /**
   * Writes a session's tokens sealed anew (an audience refresh rotated the
   * refresh token) if this owner still holds the lease on `version`; the
   * access token's own expiry is left as it is.
   */
  async storeSessionTokens(
    id: string,
    owner: string,
    version: number,
    sealed: Pick<SessionRow, "keyId" | "accessCt" | "refreshCt" | "idCt" | "refreshExpiresAt" | "keepAliveAt">,
    now: Date,
  ): Promise<boolean> {
    return this.run(
      async (em) =>
        (await em.nativeUpdate(
          SessionSchema,
          { id, version, leaseOwner: owner },
          { ...sealed, ...tokensWritten(version, now) },
        )) === 1,
    );
  }

  /** Gives a lease back after work that changed nothing on the session (an audience token was refreshed). */
  async releaseLeaseClean(id: string, owner: string): Promise<boolean> {
    return this.run(async (em) => (await em.nativeUpdate(SessionSchema, { id, leaseOwner: owner }, { leaseOwner: null, leaseUntil: null })) === 1);
  }

  /** Gives the lease back after a failed attempt, recording the failure for waiters. */
  async releaseLease(id: string, owner: string, errorCode: string, now: Date): Promise<boolean> {
    return this.run(
      async (em) =>
        (await em.nativeUpdate(
          SessionSchema,
          { id, leaseOwner: owner },
          { leaseOwner: null, leaseUntil: null, lastErrorCode: errorCode, lastErrorAt: now },
        )) === 1,
    );
  }

  /**
   * Marks the session as needing a new login and drops its refresh token.
   * With an owner, only while that owner holds the lease; without, only at `version`.
   */
  async markReauth(id: string, version: number, owner: string | null, reason: string, now: Date): Promise<boolean> {
    const where: FilterQuery<SessionRow> = owner === null ? { id, version } : { id, version, leaseOwner: owner };
    return this.run(
      async (em) =>
        (await em.nativeUpdate(SessionSchema, where, {
          status: "reauth_required",
          reauthReason: reason,
          refreshCt: null,
          version: version + 1,
          updatedAt: now,
          leaseOwner: null,
          leaseUntil: null,
        })) === 1,
    );
  }

  /** Records a read, for the background refresher's "recently used" window. */
  async touch(id: string, now: Date): Promise<void> {
    await this.run((em) => em.nativeUpdate(SessionSchema, { id }, { lastUsedAt: now }));
  }

  /**
   * Deletes the session if it belongs to the user; returns the row deleted, if
   * any. `check` sees the row first and may throw to keep it. The delete is
   * conditional on the row's version, so the row returned is exactly the one
   * deleted: a refresh landing in between (new tokens) is read again, and the
   * caller revokes the tokens that really were stored.
   */
  async deleteForUser(
    id: string,
    userId: string,
    check: (row: SessionRow) => void | Promise<void> = () => undefined,
  ): Promise<SessionRow | null> {
    return this.run(async (em) => {
      for (;;) {
        const row = normalize(await em.findOne(SessionSchema, { id, userId }, { disableIdentityMap: true }));
        if (!row) return null;
        await check(row);
        if ((await em.nativeDelete(SessionSchema, { id, userId, version: row.version })) === 1) return row;
      }
    });
  }

  /** A user's sessions, newest first, optionally at some providers only. */
  async listForUser(userId: string, providers: readonly string[] | undefined, limit: number): Promise<SessionRow[]> {
    const where: FilterQuery<SessionRow> = providers ? { userId, provider: { $in: [...providers] } } : { userId };
    return this.run(async (em) =>
      (await em.find(SessionSchema, where, { orderBy: { createdAt: "desc" }, limit, disableIdentityMap: true })).map(
        (r) => normalize(r) as SessionRow,
      ),
    );
  }

  /**
   * Deletes every session of a user (optionally at some providers only);
   * returns the rows deleted, each as it was when deleted (see deleteForUser).
   */
  async deleteAllForUser(userId: string, providers: readonly string[] | undefined): Promise<SessionRow[]> {
    return this.deleteAll(providers ? { userId, provider: { $in: [...providers] } } : { userId });
  }

  /**
   * Deletes the sessions of a provider whose ID token had this `sid`, or
   * else this `sub` (back-channel logout); returns the rows deleted.
   */
  async deleteForLogout(provider: string, by: { sid: string } | { subject: string }): Promise<SessionRow[]> {
    return this.deleteAll({ provider, ...by });
  }

  /**
   * deleteForLogout in one transaction with recording the logout token's
   * `jti`: either both happen or neither, so a logout that failed can be
   * retried with the same token. "replayed" when the jti was recorded before.
   */
  async deleteForLogoutOnce(provider: string, by: { sid: string } | { subject: string }, seen: LogoutTokenRow): Promise<SessionRow[] | "replayed"> {
    try {
      return await this.run((em) =>
        em.transactional(async (tx) => {
          await tx.insert(LogoutTokenSchema, seen);
          return deleteAllOn(tx, { provider, ...by });
        }),
      );
    } catch (err) {
      if (isUniqueViolation(err)) return "replayed";
      throw err;
    }
  }

  /** Deletes every session of a provider; returns the rows deleted. */
  async deleteAllForProvider(provider: string): Promise<SessionRow[]> {
    return this.deleteAll({ provider });
  }

  /** How many sessions a provider has. */
  async countForProvider(provider: string): Promise<number> {
    return this.run((em) => em.count(SessionSchema, { provider }));
  }

  /** deleteAllOn on a fresh EntityManager. */
  private async deleteAll(where: FilterQuery<SessionRow>): Promise<SessionRow[]> {
    return this.run((em) => deleteAllOn(em, where));
  }

  /**
   * Batch claim for the background refresher: takes the lease on up to
   * `limit` due sessions of one provider in one statement, soonest expiry
   * first, and returns them as leased. The provider's live leases over all
   * replicas never exceed `clusterLimit`: on PostgreSQL claims of a provider
   * take turns under a transaction-scoped advisory lock, count the live
   * leases, and skip rows another transaction has locked (SKIP LOCKED).
   * `more`: the claim took all it was allowed (or the cluster bound allowed
   * none), so more sessions may be due.
   */
  async claimDue(q: ClaimQuery): Promise<{ rows: SessionRow[]; more: boolean }> {
    const pg = this.dialect === "postgresql";
    return this.run((em) =>
      em.transactional(async (tx) => {
        if (pg) await (tx as SqlEntityManager).execute("select pg_advisory_xact_lock(hashtextextended(?, 0))", [`token-service:refresh:${q.provider}`]);
        const busy = await tx.count(SessionSchema, { provider: q.provider, leaseUntil: { $gt: q.now } });
        const n = Math.min(q.limit, q.clusterLimit - busy);
        if (n <= 0) return { rows: [], more: true };
        const due: FilterQuery<SessionRow>[] = [
          { lastUsedAt: { $gte: q.usedSince }, $or: [{ refreshAt: { $lte: q.now } }, { refreshAt: null, accessExpiresAt: { $lt: q.horizon } }] },
        ];
        if (q.keepAliveIssuedBefore) {
          due.push({ keepAliveAt: { $lte: q.now } }, { keepAliveAt: null, accessIssuedAt: { $lt: q.keepAliveIssuedBefore } });
        }
        const where: FilterQuery<SessionRow> = {
          status: "active",
          refreshCt: { $ne: null },
          provider: q.provider,
          $and: [
            { $or: [{ leaseUntil: null }, { leaseUntil: { $lt: q.now } }] },
            { $or: [{ lastErrorAt: null }, { lastErrorAt: { $lt: q.failedBefore } }] },
            { $or: due },
            ...(q.createdAfter ? [{ createdAt: { $gte: q.createdAfter } }] : []),
          ],
        };
        const ids = (tx as SqlEntityManager).createQueryBuilder(SessionSchema).select("id").where(where).orderBy({ accessExpiresAt: "asc" }).limit(n);
        if (pg) ids.setLockMode(LockMode.PESSIMISTIC_PARTIAL_WRITE);
        const rows = await (tx as SqlEntityManager)
          .createQueryBuilder(SessionSchema)
          .update({ leaseOwner: q.owner, leaseUntil: q.until })
          .where({ id: { $in: ids.getKnexQuery() } })
          .returning("*")
          .execute<SessionRow[]>("all", true);
        return { rows: rows.map((r) => normalize(r) as SessionRow), more: rows.length === n };
      }),
    );
  }

  /** Deletes up to `limit` sessions matching `where`; returns how many. */
  private async deleteBatch(where: FilterQuery<SessionRow>, limit: number): Promise<number> {
    return this.run(async (em) => {
      const rows = await em.find(SessionSchema, where, { fields: ["id"], limit, disableIdentityMap: true });
      if (rows.length === 0) return 0;
      return em.nativeDelete(SessionSchema, { id: { $in: rows.map((r) => r.id) } });
    });
  }

  /** Sessions created before `createdBefore` (the absolute lifetime). */
  deleteOlderThan(createdBefore: Date, limit: number): Promise<number> {
    return this.deleteBatch({ createdAt: { $lt: createdBefore } }, limit);
  }

  /** REAUTH_REQUIRED sessions unchanged since `updatedBefore` (the retention). */
  deleteReauthBefore(updatedBefore: Date, limit: number): Promise<number> {
    return this.deleteBatch({ status: "reauth_required", updatedAt: { $lt: updatedBefore } }, limit);
  }

  /** Sessions that can never be used again: refresh token known expired, access token expired too. */
  deleteUnrefreshable(now: Date, limit: number): Promise<number> {
    return this.deleteBatch({ accessExpiresAt: { $lt: now }, refreshExpiresAt: { $lt: now } }, limit);
  }

  /** Rows not under `keyId`, in id order after `afterId`: one batch of a key rotation. */
  async findNotUnderKey(keyId: string, afterId: string, limit: number): Promise<SessionRow[]> {
    return this.run(async (em) =>
      (
        await em.find(
          SessionSchema,
          { keyId: { $ne: keyId }, id: { $gt: afterId } },
          { orderBy: { id: "asc" }, limit, disableIdentityMap: true },
        )
      ).map((r) => normalize(r) as SessionRow),
    );
  }

  /**
   * Rewrites a row's ciphertexts (a key rotation) if it is still at `version`
   * and no replica holds a live refresh lease on it: a refresh in flight will
   * write under the primary key itself, and must find the version it leased.
   */
  async reencrypt(id: string, version: number, sealed: Pick<SessionRow, "keyId" | "accessCt" | "refreshCt" | "idCt">, now: Date): Promise<boolean> {
    const where: FilterQuery<SessionRow> = { id, version, $or: [{ leaseUntil: null }, { leaseUntil: { $lt: now } }] };
    return this.run(
      async (em) => (await em.nativeUpdate(SessionSchema, where, { ...sealed, version: version + 1, updatedAt: now })) === 1,
    );
  }

  /** Row counts per key id. */
  async countByKey(): Promise<Array<{ keyId: string; count: number }>> {
    return this.run(async (em) => {
      const rows = (await em
        .getConnection()
        .execute("select key_id, count(*) as n from sessions group by key_id order by key_id")) as Array<{
        key_id: string;
        n: number | string;
      }>;
      return rows.map((r) => ({ keyId: r.key_id, count: Number(r.n) }));
    });
  }

  /** PostgreSQL NOTIFY through the pool (a no-op on SQLite, which has no other replicas). */
  async notify(channel: string, message: string): Promise<void> {
    if (this.dialect !== "postgresql") return;
    await this.run((em) => em.getConnection().execute("select pg_notify(?, ?)", [channel, message]));
  }

  /** Tells every replica's cache to forget everything. */
  broadcastFlush(channel: string): Promise<void> {
    return this.notify(channel, "flush");
  }

  /** A cheap round trip, for readiness checks. */
  async ping(): Promise<void> {
    await this.run((em) => em.getConnection().execute("select 1"));
  }
}
