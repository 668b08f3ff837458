import { LockMode, raw, type EntityManager, type FilterQuery, type MikroORM } from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/knex";
import type { NewEvent } from "../events/types.js";
import { EndedSessionSchema, type EndedSessionRow, type EndedStatus } from "./event-entity.js";
import { EventRepository } from "./event-repository.js";
import { LogoutTokenSchema, type LogoutTokenRow } from "./provider-entity.js";
import { PgRefreshStatements, type ChangeNotice } from "./refresh-statements.js";
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

/** The batch of uses on SQLite: pairs [id, epoch ms] in one JSON array (UPDATE … FROM, SQLite 3.33 and later). */
const SQLITE_TOUCH =
  "update sessions as s set last_used_at = v.at from (select value ->> 0 as id, value ->> 1 as at from json_each(?)) as v " +
  "where s.id = v.id and (s.last_used_at is null or s.last_used_at < v.at)";

const LOGGED_OUT: Ending = { status: "logged_out", reason: "backchannel_logout" };

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
  return {
    version: version + 1,
    updatedAt: now,
    leaseOwner: null,
    leaseUntil: null,
    lastErrorCode: null,
    lastErrorAt: null,
    refreshFailures: 0,
    failingSince: null,
  };
}

/** An event about a session (never a token: only ids, the provider, the user, a reason code). */
export function sessionEvent(
  kind: NewEvent["kind"],
  row: Pick<SessionRow, "id" | "userId" | "provider">,
  reason: string | null = null,
  detail: NewEvent["detail"] = null,
): NewEvent {
  return { kind, provider: row.provider, userId: row.userId, sessionId: row.id, reason, detail };
}

/** What ended a session, as its ended_sessions row and its event say. */
export interface Ending {
  status: EndedStatus;
  /** revoke_session, revoke_user_sessions, provider_deleted or backchannel_logout. */
  reason: string;
}

/**
 * Deletes `row` if it is still at its version and, in the same transaction
 * `tx`, keeps its metadata (no token) in ended_sessions; returns the event
 * to append, or null when the row had moved.
 */
async function endOn(tx: EntityManager, row: SessionRow, ending: Ending, now: Date): Promise<NewEvent | null> {
  if ((await tx.nativeDelete(SessionSchema, { id: row.id, version: row.version })) !== 1) return null;
  const ended: EndedSessionRow = {
    id: row.id,
    userId: row.userId,
    provider: row.provider,
    status: ending.status,
    reason: ending.reason,
    scope: row.scope,
    resources: row.resources,
    createdAt: row.createdAt,
    lastUsedAt: row.lastUsedAt,
    endedAt: now,
  };
  await tx.insert(EndedSessionSchema, ended);
  return sessionEvent(ending.status === "logged_out" ? "session.logged_out" : "session.revoked", row, ending.reason);
}

/** Rows leave here with Buffers, whatever the driver returned (see asBuffer). */
function normalize(row: SessionRow | null): SessionRow | null {
  if (!row) return null;
  row.accessCt = asBuffer(row.accessCt) as Buffer;
  row.refreshCt = asBuffer(row.refreshCt);
  row.idCt = asBuffer(row.idCt);
  return row;
}

/**
 * Ends the matching rows, each as it was when deleted (a compare-and-set on
 * its version, as deleteForUser). `end` ends one row and says whether it won.
 */
async function endAllOn(
  em: EntityManager,
  where: FilterQuery<SessionRow>,
  end: (row: SessionRow) => Promise<boolean>,
): Promise<SessionRow[]> {
  const deleted: SessionRow[] = [];
  for (;;) {
    const rows = (await em.find(SessionSchema, where, { disableIdentityMap: true })).map((r) => normalize(r) as SessionRow);
    if (rows.length === 0) return deleted;
    for (const row of rows) if (await end(row)) deleted.push(row);
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
    /** The outbox that status changes append to, in their own transaction. */
    readonly events: EventRepository = new EventRepository(orm),
  ) {}

  /** PostgreSQL: the refresh path's prepared statements (refresh-statements.ts), opened on first use. */
  private fastPath: Promise<PgRefreshStatements> | undefined;

  private run<T>(fn: (em: EntityManager) => Promise<T>): Promise<T> {
    return runOn(this.orm, fn);
  }

  /**
   * A status change and its event in one transaction: reads what the event
   * needs of the row where `where` holds, applies `set` there (then `also`,
   * inside the same transaction), and appends the event `eventOf` makes;
   * false, with no event, when the row no longer matched.
   */
  private changeWithEvent(
    where: FilterQuery<SessionRow>,
    set: Partial<SessionRow>,
    eventOf: (row: Pick<SessionRow, "id" | "userId" | "provider" | "refreshFailures">) => NewEvent,
    also?: (tx: EntityManager) => Promise<unknown>,
  ): Promise<boolean> {
    return this.events.transactional(async (tx) => {
      const row = await tx.findOne(SessionSchema, where, { fields: ["id", "userId", "provider", "refreshFailures"], disableIdentityMap: true });
      if (!row || (await tx.nativeUpdate(SessionSchema, where, set)) !== 1) return { result: false, events: [] };
      await also?.(tx);
      return { result: true, events: [eventOf(row)] };
    });
  }

  /**
   * Runs `fn` on the prepared statements when there are some (PostgreSQL),
   * else `orm` on the ORM (SQLite), turning an outage into DatabaseUnavailableError.
   */
  private async fast<T>(fn: (s: PgRefreshStatements) => Promise<T>, orm: (em: EntityManager) => Promise<T>): Promise<T> {
    if (this.dialect !== "postgresql") return this.run(orm);
    try {
      this.fastPath ??= PgRefreshStatements.open(this.orm.config.get("clientUrl") as string);
      return await fn(await this.fastPath);
    } catch (err) {
      if (isUnavailable(err)) throw new DatabaseUnavailableError(err);
      throw err;
    }
  }

  /** Closes the refresh path's own connections (the ORM is closed by its owner). */
  async close(): Promise<void> {
    const fast = this.fastPath;
    this.fastPath = undefined;
    if (fast) await (await fast.catch(() => undefined))?.close();
  }

  /** Inserts a new session (and its session.created event). */
  async insert(row: SessionRow): Promise<void> {
    await this.events.transactional(async (tx) => {
      await tx.insert(SessionSchema, row);
      return { result: undefined, events: [sessionEvent("session.created", row)] };
    });
  }

  /**
   * Writes new tokens where `where` holds. A session that was not failing
   * takes one statement; one that was failing takes a transaction that also
   * appends session.recovered. With `notice` (PostgreSQL), the write sends
   * that NOTIFY itself, committed with it.
   */
  private async writeTokens(id: string, version: number, owner: string, set: Partial<SessionRow>, notice?: ChangeNotice): Promise<boolean> {
    const where: FilterQuery<SessionRow> = { id, version, leaseOwner: owner };
    const plain = await this.fast(
      (s) => s.writeTokens(id, version, owner, set, notice),
      (em) => em.nativeUpdate(SessionSchema, { $and: [where, { refreshFailures: 0 }] }, set),
    );
    if (plain === 1) return true;
    return this.changeWithEvent(
      where,
      set,
      (row) => sessionEvent("session.recovered", row, null, { failures: row.refreshFailures ?? 0 }),
      notice && this.dialect === "postgresql" ? (tx) => (tx as SqlEntityManager).execute("select pg_notify(?, ?)", [notice.channel, notice.message]) : undefined,
    );
  }

  async findById(id: string): Promise<SessionRow | null> {
    return normalize(
      await this.fast(
        (s) => s.findById(id),
        (em) => em.findOne(SessionSchema, { id }, { disableIdentityMap: true }),
      ),
    );
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
    return normalize(
      await this.fast(
        (s) => s.acquireLease(id, version, owner, now, until),
        async (em) => {
          const rows = await (em as SqlEntityManager)
            .createQueryBuilder(SessionSchema)
            .update({ leaseOwner: owner, leaseUntil: until })
            .where(where)
            .returning("*")
            .execute<SessionRow[]>("all", true);
          return rows[0] ?? null;
        },
      ),
    );
  }

  /**
   * Writes refreshed tokens if this owner still holds the lease on `version`.
   * With `notice` (PostgreSQL), a write that succeeds has also sent that NOTIFY.
   */
  async completeRefresh(id: string, owner: string, version: number, fields: RefreshedFields, now: Date, notice?: ChangeNotice): Promise<boolean> {
    return this.writeTokens(id, version, owner, { ...fields, ...tokensWritten(version, now) }, notice);
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
    return this.writeTokens(id, version, owner, { ...sealed, ...tokensWritten(version, now) });
  }

  /** Gives a lease back after work that changed nothing on the session (an audience token was refreshed). */
  async releaseLeaseClean(id: string, owner: string): Promise<boolean> {
    return this.fast(
      (s) => s.releaseLeaseClean(id, owner),
      async (em) => (await em.nativeUpdate(SessionSchema, { id, leaseOwner: owner }, { leaseOwner: null, leaseUntil: null })) === 1,
    );
  }

  /**
   * Gives the lease back after a failed attempt, recording the failure for
   * waiters and counting it. The first failure of a run (the session starts
   * REFRESH_FAILING) appends session.refresh_failing in the same transaction;
   * later ones take one statement.
   */
  async releaseLease(id: string, owner: string, errorCode: string, now: Date): Promise<boolean> {
    const released = { leaseOwner: null, leaseUntil: null, lastErrorCode: errorCode, lastErrorAt: now };
    const more = await this.fast(
      (s) => s.releaseLeaseAgain(id, owner, errorCode, now),
      async (em) =>
        (await em.nativeUpdate(
          SessionSchema,
          { id, leaseOwner: owner, refreshFailures: { $gt: 0 } },
          { ...released, refreshFailures: raw("refresh_failures + 1") as unknown as number },
        )) === 1,
    );
    if (more) return true;
    return this.changeWithEvent({ id, leaseOwner: owner, refreshFailures: 0 }, { ...released, refreshFailures: 1, failingSince: now }, (row) =>
      sessionEvent("session.refresh_failing", row, errorCode, { failures: 1 }),
    );
  }

  /**
   * Marks the session as needing a new login and drops its refresh token.
   * With an owner, only while that owner holds the lease; without, only at `version`.
   */
  async markReauth(id: string, version: number, owner: string | null, reason: string, now: Date): Promise<boolean> {
    const where: FilterQuery<SessionRow> = owner === null ? { id, version } : { id, version, leaseOwner: owner };
    return this.changeWithEvent(
      where,
      {
        status: "reauth_required",
        reauthReason: reason,
        reauthAt: now,
        refreshCt: null,
        version: version + 1,
        updatedAt: now,
        leaseOwner: null,
        leaseUntil: null,
        refreshFailures: 0,
        failingSince: null,
      },
      (row) => sessionEvent("session.reauth_required", row, reason),
    );
  }

  /**
   * Records uses, for the background refresher's "recently used" window: each
   * session's last_used_at set to its time in `times`, never moved backwards,
   * in one statement for the whole batch (see sessions/last-used-writer.ts).
   * Returns the rows written.
   */
  async touchMany(ids: string[], times: Date[]): Promise<number> {
    if (ids.length === 0) return 0;
    return this.fast(
      (s) => s.touchMany(ids, times),
      async (em) => {
        // SQLite keeps these datetime columns as epoch milliseconds (as the ORM writes them); one JSON parameter carries the batch.
        const batch = JSON.stringify(ids.map((id, i) => [id, times[i]!.getTime()]));
        const res = (await (em as SqlEntityManager).execute(SQLITE_TOUCH, [batch], "run")) as { affectedRows?: number };
        return res.affectedRows ?? 0;
      },
    );
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
    ending: Ending = { status: "revoked", reason: "revoke_session" },
  ): Promise<SessionRow | null> {
    for (;;) {
      const row = await this.run(async (em) => normalize(await em.findOne(SessionSchema, { id, userId }, { disableIdentityMap: true })));
      if (!row) return null;
      await check(row);
      if (await this.end(row, ending)) return row;
    }
  }

  /**
   * Ends one session (see endOn) in a transaction of its own, with its event;
   * false when the row had moved.
   */
  private end(row: SessionRow, ending: Ending): Promise<boolean> {
    return this.events.transactional(async (tx) => {
      const event = await endOn(tx, row, ending, new Date());
      return { result: event !== null, events: event ? [event] : [] };
    });
  }

  /** A user's ended (revoked, logged-out) sessions still retained, newest first, optionally at some providers only. */
  async listEndedForUser(userId: string, providers: readonly string[] | undefined, limit: number): Promise<EndedSessionRow[]> {
    const where: FilterQuery<EndedSessionRow> = providers ? { userId, provider: { $in: [...providers] } } : { userId };
    return this.run((em) => em.find(EndedSessionSchema, where, { orderBy: { endedAt: "desc" }, limit, disableIdentityMap: true }));
  }

  /** Ended sessions that ended before `endedBefore` (their retention); returns how many were deleted. */
  async deleteEndedBefore(endedBefore: Date, limit: number): Promise<number> {
    return this.run(async (em) => {
      const rows = await em.find(EndedSessionSchema, { endedAt: { $lt: endedBefore } }, { fields: ["id"], limit, disableIdentityMap: true });
      if (rows.length === 0) return 0;
      return em.nativeDelete(EndedSessionSchema, { id: { $in: rows.map((r) => r.id) } });
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
    return this.endAll(providers ? { userId, provider: { $in: [...providers] } } : { userId }, { status: "revoked", reason: "revoke_user_sessions" });
  }

  /**
   * Deletes the sessions of a provider whose ID token had this `sid`, or
   * else this `sub` (back-channel logout); returns the rows deleted.
   */
  async deleteForLogout(provider: string, by: { sid: string } | { subject: string }): Promise<SessionRow[]> {
    return this.endAll({ provider, ...by }, LOGGED_OUT);
  }

  /**
   * deleteForLogout in one transaction with recording the logout token's
   * `jti`: either both happen or neither, so a logout that failed can be
   * retried with the same token. "replayed" when the jti was recorded before.
   */
  async deleteForLogoutOnce(provider: string, by: { sid: string } | { subject: string }, seen: LogoutTokenRow): Promise<SessionRow[] | "replayed"> {
    try {
      return await this.events.transactional(async (tx) => {
        await tx.insert(LogoutTokenSchema, seen);
        const events: NewEvent[] = [];
        const now = new Date();
        const rows = await endAllOn(tx, { provider, ...by }, async (row) => {
          const event = await endOn(tx, row, LOGGED_OUT, now);
          if (event) events.push(event);
          return event !== null;
        });
        return { result: rows, events };
      });
    } catch (err) {
      if (isUniqueViolation(err)) return "replayed";
      throw err;
    }
  }

  /** Deletes every session of a provider; returns the rows deleted. */
  async deleteAllForProvider(provider: string): Promise<SessionRow[]> {
    return this.endAll({ provider }, { status: "revoked", reason: "provider_deleted" });
  }

  /** How many sessions a provider has. */
  async countForProvider(provider: string): Promise<number> {
    return this.run((em) => em.count(SessionSchema, { provider }));
  }

  /** Ends every matching session, each in a transaction of its own with its event. */
  private async endAll(where: FilterQuery<SessionRow>, ending: Ending): Promise<SessionRow[]> {
    return this.run((em) => endAllOn(em, where, (row) => this.end(row, ending)));
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
    await this.fast(
      (s) => s.notify(channel, message),
      async () => undefined,
    );
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
