import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { RefreshConfig } from "../config.js";
import { grantedResources, headOf, type SessionHead, type SessionRow } from "../db/session-entity.js";
import { DatabaseUnavailableError, type RefreshedFields, type SessionRepository } from "../db/session-repository.js";
import { errSummary, sessionRef, type Logger } from "../logger.js";
import { classifyProviderError } from "../providers/errors.js";
import { withReregistration, type ProviderRegistry, type ProviderTokens } from "../providers/provider-client.js";
import { revokeTokens } from "../providers/revoke.js";
import {
  ProviderUnavailableError,
  ReauthRequiredError,
  RefreshTimeoutError,
  SessionNotFoundError,
} from "../sessions/errors.js";
import { accessTokenExpiry, idTokenExpiry } from "../sessions/expiry.js";
import type { OpenTokens, TokenVault } from "../sessions/token-vault.js";
import type { TokenAnswer } from "../sessions/session-service.js";
import type { ChangeNotice } from "../db/refresh-statements.js";
import { pollDelayMs, type RowWaiter } from "./waiter.js";
import type { Span } from "@opentelemetry/api";
import { NO_SPANS, sessionAttributes, type Spans, type TraceContext } from "../tracing/spans.js";
import { abortable } from "../util/abortable.js";
import { RefreshSchedule } from "./schedule.js";

/** What a refresh produced: the session as now stored, and its tokens when this process refreshed them. */
export interface RefreshResult {
  row: SessionHead;
  /** In clear, only when this process did the refresh (saves a decrypt). */
  tokens?: OpenTokens;
  /**
   * Tokens opened to answer callers, and the answers made of them. Callers
   * here that shared one refresh or one wait share this object, so they share
   * one decrypt and one answer (and its encoded response) of each kind, too.
   */
  opened?: { access?: string; id?: string; answers?: { access?: TokenAnswer; id?: TokenAnswer } };
}

/** Counters for metrics and tests. */
export interface RefreshStats {
  /** Refreshes this process started at a provider. */
  started: number;
  /** Callers that joined a refresh already in flight in this process. */
  coalesced: number;
  /** Leases taken over from a replica whose lease had lapsed. */
  takeovers: number;
}

/** Outcome hook, for audit lines and metrics. */
export type RefreshListener = (event: {
  row: SessionRow;
  outcome: "success" | "reauth_required" | "unavailable" | "lease_lost";
  code?: string;
  ms: number;
}) => void;

/**
 * Single-flight refresh. In process, concurrent callers for one session share
 * one promise. Across processes, a lease on the session row (owner, expiry,
 * version) taken with a conditional UPDATE decides who calls the provider; no
 * transaction or connection is held while the provider works. Everyone else
 * waits for the row's version to move and reads the result from the row.
 */
export class RefreshCoordinator {
  private readonly inflight = new Map<string, Promise<RefreshResult>>();
  readonly stats: RefreshStats = { started: 0, coalesced: 0, takeovers: 0 };
  private readonly listeners: RefreshListener[] = [];
  /** Time kept between the end of the provider budget and the lease's expiry. */
  private readonly leaseSafetyMs: number;
  /** The due times written with every token (background refresh and keep-alive). */
  readonly schedule: RefreshSchedule;

  constructor(
    private readonly repo: SessionRepository,
    private readonly vault: TokenVault,
    private readonly providers: ProviderRegistry,
    private readonly waiter: RowWaiter,
    private readonly config: RefreshConfig,
    private readonly logger: Logger,
    /** Identifies this replica in lease_owner (never a secret). */
    readonly replicaId: string = `${process.pid}-${randomBytes(4).toString("hex")}`,
    private readonly spans: Spans = NO_SPANS,
  ) {
    // Room after the provider budget for storing the result: a statement may take up to the
    // database timeouts (5 s pool wait + 5 s statement) before the lease lapses.
    this.leaseSafetyMs = Math.min(11_000, Math.floor(config.leaseMs / 3));
    this.schedule = new RefreshSchedule(providers, config);
  }

  onOutcome(listener: RefreshListener): void {
    this.listeners.push(listener);
  }

  /**
   * Refreshes the session `row` describes, or waits for the refresh already
   * under way here or on another replica. `signal` ends only this caller's
   * wait; the shared refresh goes on and its result is stored.
   */
  refresh(row: SessionHead, signal?: AbortSignal, caller = "unknown", trace?: TraceContext): Promise<RefreshResult> {
    const existing = this.inflight.get(row.id);
    const join = (ctx: TraceContext) => {
      if (!existing) return this.register(row, true, caller, ctx);
      this.stats.coalesced++;
      // A background pass that found another replica's lease comes back unchanged: then wait for real.
      return existing.then((r) => (tokenChanged(row, r.row) || r.row.status !== "active" ? r : this.refresh(r.row, undefined, caller, ctx)));
    };
    const shared = trace ? this.traced(row, existing !== undefined, trace, join) : join(undefined);
    return signal ? abortable(shared, signal) : shared;
  }

  /**
   * `work` inside a "refresh" span: the one that refreshes has the lease,
   * wait and provider spans as children; one that joined a refresh in
   * flight here is marked `coalesced`.
   */
  private traced(row: SessionHead, coalesced: boolean, parent: TraceContext, work: (ctx: TraceContext) => Promise<RefreshResult>): Promise<RefreshResult> {
    const attributes = { ...sessionAttributes(row.id, row.provider), "token_service.coalesced": coalesced };
    return this.spans.run("refresh", parent, { attributes }, async (span, ctx) => {
      try {
        const result = await work(ctx);
        span?.setAttribute("token_service.outcome", result.tokens ? "refreshed" : tokenChanged(row, result.row) ? "refreshed_elsewhere" : "unchanged");
        return result;
      } catch (err) {
        span?.setAttribute("token_service.outcome", (err as { code?: string }).code?.toLowerCase() ?? "error");
        throw err;
      }
    });
  }

  /**
   * Background refresh of a row this replica already leased (a batch claim,
   * `owner` until `until`). Undefined, with the lease given back, when a
   * refresh of the session is under way here already.
   */
  refreshClaimed(row: SessionRow, owner: string, until: Date, trace?: TraceContext): Promise<RefreshResult> | undefined {
    if (this.inflight.has(row.id)) {
      void this.repo.releaseLeaseClean(row.id, owner).catch(() => undefined);
      return undefined;
    }
    const work = (ctx: TraceContext) => this.refreshHolding(row, owner, until, "background", ctx);
    const p = (trace ? this.traced(headOf(row), false, trace, work) : work(undefined)).finally(() => this.inflight.delete(row.id));
    this.inflight.set(row.id, p);
    return p;
  }

  /** `caller` names who set the refresh off (a caller, or "background"), for audit lines. */
  private register(row: SessionHead, waitForOthers: boolean, caller: string, trace: TraceContext): Promise<RefreshResult> {
    const p = this.run(row, waitForOthers, caller, trace).finally(() => this.inflight.delete(row.id));
    this.inflight.set(row.id, p);
    return p;
  }

  /** Tells every replica that a session changed or went away (caches drop it, waiters wake). */
  announce(sessionId: string): Promise<void> {
    return this.waiter.notify(sessionId);
  }

  /** Whether a refresh of this session is in flight in this process. */
  isRefreshing(sessionId: string): boolean {
    return this.inflight.has(sessionId);
  }

  /** Sessions with a refresh in flight in this process. */
  get inflightCount(): number {
    return this.inflight.size;
  }

  /**
   * Waits (up to `maxMs`) for the refreshes in flight here, whether or not a
   * caller still waits for them: a provider may already have rotated a
   * refresh token, and the new one must be stored before the database closes.
   */
  async drain(maxMs: number): Promise<void> {
    const deadline = Date.now() + maxMs;
    while (this.inflight.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...this.inflight.values()]), sleep(Math.max(1, deadline - Date.now()))]);
    }
  }

  private async run(initial: SessionHead, waitForOthers: boolean, caller: string, trace: TraceContext): Promise<RefreshResult> {
    let observed = initial.version;
    const startedAt = new Date();
    // A waiter gives up after two leases: by then the holder either finished or lapsed and we took over.
    const giveUpAt = Date.now() + 2 * this.config.leaseMs + 1000;
    let current: SessionHead = initial;
    // Open while this caller waits on another replica's refresh (tracing on).
    let waiting: Span | undefined;
    // From before the first lease attempt: a change announced while a round reads the row or tries the lease is kept.
    const watch = waitForOthers ? this.waiter.watch(initial.id) : undefined;
    try {
      for (let round = 0; ; round++) {
        if (current.version !== observed) {
          if (tokenChanged(initial, current) || current.status !== "active") return this.settled(current);
          // Changed for another reason (a key rotation re-encrypted it): it still needs its refresh.
          observed = current.version;
        }
        if (current.status !== "active") throw new ReauthRequiredError(current.reauthReason ?? "reauth_required", current.provider);
        const now = new Date();
        const until = new Date(now.getTime() + this.config.leaseMs);
        const owner = `${this.replicaId}:${randomBytes(4).toString("hex")}`;
        const lapsed = current.leaseOwner !== null && current.leaseUntil !== null && current.leaseUntil < now;
        // Called at once (not later, when `current` and `observed` may have moved on).
        const full = await tracedLease(this.spans, trace, lapsed, () => this.repo.acquireLease(current.id, observed, owner, now, until));
        if (full) {
          if (lapsed) {
            this.stats.takeovers++;
            this.logger.warn({ sid: sessionRef(current.id), provider: current.provider }, "took over a lapsed refresh lease");
          }
          waiting?.end();
          waiting = undefined;
          return await this.refreshHolding(full, owner, until, caller, trace);
        }
        if (!watch) return { row: current };
        if (Date.now() >= giveUpAt) throw new RefreshTimeoutError();
        waiting ??= this.spans.begin("refresh wait (another replica)", trace, { attributes: sessionAttributes(current.id, current.provider) })?.span;
        waiting?.setAttribute("token_service.wait_rounds", round + 1);
        await watch.next(pollDelayMs(round));
        const found = await this.repo.findById(current.id);
        if (!found) throw new SessionNotFoundError();
        const next = headOf(found);
        if (
          found.version === observed &&
          found.leaseOwner === null &&
          found.lastErrorAt !== null &&
          found.lastErrorAt >= startedAt
        ) {
          // The holder's attempt failed transiently while we waited: share its outcome, don't hammer the provider.
          throw new ProviderUnavailableError(found.lastErrorCode ?? "unavailable", found.provider);
        }
        current = next;
      }
    } finally {
      watch?.close();
      waiting?.end();
    }
  }

  private settled(row: SessionHead): RefreshResult {
    if (row.status !== "active") throw new ReauthRequiredError(row.reauthReason ?? "reauth_required", row.provider);
    return { row };
  }

  private emit(row: SessionRow, outcome: Parameters<RefreshListener>[0]["outcome"], started: number, code?: string) {
    for (const l of this.listeners) l({ row, outcome, code, ms: Date.now() - started });
  }

  private async refreshHolding(row: SessionRow, owner: string, leaseUntil: Date, caller: string, trace: TraceContext): Promise<RefreshResult> {
    const started = Date.now();
    const log = this.logger.child({ sid: sessionRef(row.id), provider: row.provider, caller, userId: row.userId });
    const provider = this.providers.get(row.provider);
    let tokens: OpenTokens;
    try {
      if (!provider) throw new ProviderUnavailableError("provider_not_configured", row.provider);
      tokens = this.vault.openAll(row);
    } catch (err) {
      await this.repo.releaseLease(row.id, owner, "local_error", new Date()).catch(() => undefined);
      throw err;
    }
    if (tokens.refresh === undefined) {
      await this.repo.markReauth(row.id, row.version, owner, "no_refresh_token", new Date());
      await this.waiter.notify(row.id);
      log.info({ audit: true, event: "reauth_required", reason: "no_refresh_token" }, "session has no refresh token");
      this.emit(row, "reauth_required", started, "no_refresh_token");
      throw new ReauthRequiredError("no_refresh_token", row.provider);
    }

    this.stats.started++;
    let response: ProviderTokens;
    try {
      // invalid_client from a client the service registered itself: it registers again once and retries.
      const refreshToken = tokens.refresh;
      response = await withReregistration(this.providers, provider, (client) =>
        client.refresh(refreshToken, {
          deadline: leaseUntil.getTime() - this.leaseSafetyMs,
          resource: onlyResource(row.resources),
          grantedScope: row.scope,
          trace,
        }),
      );
    } catch (err) {
      const e = classifyProviderError(err);
      const now = new Date();
      if (e.kind === "rejected") {
        await this.repo.markReauth(row.id, row.version, owner, e.code, now);
        await this.waiter.notify(row.id);
        log.warn(
          { audit: true, event: "reauth_required", reason: e.code, ms: Date.now() - started },
          "provider rejected the refresh; the session needs a new login",
        );
        this.emit(row, "reauth_required", started, e.code);
        throw new ReauthRequiredError(e.code, row.provider, { cause: e });
      }
      await this.repo.releaseLease(row.id, owner, e.code, now).catch((dbErr: unknown) =>
        log.warn({ err: errSummary(dbErr) }, "could not release the refresh lease; it will lapse"),
      );
      log.warn(
        { audit: true, event: "refresh", outcome: "failure", code: e.code, status: e.options.status, ms: Date.now() - started },
        "refresh failed; session kept",
      );
      this.emit(row, "unavailable", started, e.code);
      throw new ProviderUnavailableError(e.code, row.provider, { cause: e });
    }

    const now = new Date();
    const next: OpenTokens = {
      access: response.accessToken,
      // Rotation: a new refresh token replaces the old; none in the response keeps the old one.
      refresh: response.refreshToken ?? tokens.refresh,
      id: response.idToken ?? tokens.id,
    };
    const expiry = accessTokenExpiry({
      accessToken: response.accessToken,
      expiresInSeconds: response.expiresIn,
      now,
      defaultLifetimeSeconds: provider.config.defaultTokenLifetimeSeconds,
    });
    const refreshExpiresAt =
      response.refreshExpiresIn !== undefined && response.refreshExpiresIn > 0
        ? new Date(now.getTime() + response.refreshExpiresIn * 1000)
        : response.refreshToken
          ? null
          : row.refreshExpiresAt;
    const fields: RefreshedFields = {
      ...this.vault.sealAll(row, next),
      tokenType: response.tokenType,
      scope: response.scope ?? row.scope,
      accessExpiresAt: expiry.expiresAt,
      accessIssuedAt: expiry.issuedAt,
      idExpiresAt: response.idToken ? (idTokenExpiry(response.idToken) ?? null) : row.idExpiresAt,
      refreshExpiresAt,
      ...this.schedule.dueTimes({ ...row, accessIssuedAt: expiry.issuedAt, accessExpiresAt: expiry.expiresAt, refreshExpiresAt }, now),
    };

    // The provider may have spent the old refresh token: the new one must be
    // stored before anyone gets the new access token. Retry the write while
    // the lease is ours rather than lose it to a database blip.
    const notice = this.waiter.changeNotice?.(row.id);
    const written = await this.spans.run("refresh store", trace, { attributes: leaseAttributes(this.spans) }, () =>
      this.persist(row, owner, fields, now, leaseUntil, log, notice),
    );
    if (!written) {
      const still = await this.repo.findById(row.id).catch(() => undefined);
      if (still === null) {
        // Revoked while we refreshed: revoke what we just got, too.
        log.info("session was revoked during its refresh; revoking the new tokens");
        await revokeTokens(provider, next, { deadline: Date.now() + this.config.providerTimeoutMs }, log);
        throw new SessionNotFoundError();
      }
      log.error("refresh lease was lost before the new tokens were stored; new tokens discarded");
      this.emit(row, "lease_lost", started, "lease_lost");
      throw new ProviderUnavailableError("lease_lost", row.provider);
    }
    // The write sent the cross-replica NOTIFY itself when it could (one round trip less).
    if (notice && this.waiter.notifyLocal) this.waiter.notifyLocal(row.id);
    else await this.waiter.notify(row.id);
    const stored: SessionRow = {
      ...row,
      ...fields,
      version: row.version + 1,
      updatedAt: now,
      leaseOwner: null,
      leaseUntil: null,
      lastErrorCode: null,
      lastErrorAt: null,
    };
    log.info(
      { audit: true, event: "refresh", outcome: "success", ms: Date.now() - started, rotated: response.refreshToken !== undefined },
      "session refreshed",
    );
    this.emit(stored, "success", started);
    return { row: headOf(stored), tokens: next };
  }

  private async persist(
    row: SessionRow,
    owner: string,
    fields: RefreshedFields,
    now: Date,
    leaseUntil: Date,
    log: Logger,
    notice: ChangeNotice | undefined,
  ): Promise<boolean> {
    for (let attempt = 1; ; attempt++) {
      try {
        if (await this.repo.completeRefresh(row.id, owner, row.version, fields, now, notice)) return true;
        if (attempt === 1) return false;
        // A retry after an error whose first attempt did commit finds its own write there.
        const stored = await this.repo.findById(row.id);
        return (
          stored !== null &&
          stored.version === row.version + 1 &&
          stored.accessIssuedAt.getTime() === fields.accessIssuedAt.getTime() &&
          stored.accessExpiresAt.getTime() === fields.accessExpiresAt.getTime()
        );
      } catch (err) {
        const retryable = err instanceof DatabaseUnavailableError && Date.now() + 250 * attempt < leaseUntil.getTime();
        log.error({ err: errSummary(err), attempt, retrying: retryable }, "could not store refreshed tokens");
        if (!retryable) throw err;
        await sleep(250 * attempt);
      }
    }
  }
}

/** Whether `after` holds a different access token than `before` (a refresh happened in between). */
function tokenChanged(before: SessionHead, after: SessionHead): boolean {
  return (
    before.accessIssuedAt.getTime() !== after.accessIssuedAt.getTime() ||
    before.accessExpiresAt.getTime() !== after.accessExpiresAt.getTime()
  );
}

/** The session's resource when it was granted exactly one (RFC 8707: sent again on refresh); otherwise none. */
function onlyResource(resources: string | null): string | undefined {
  const granted = grantedResources(resources);
  return granted.length === 1 ? granted[0] : undefined;
}

/** A statement on the session's row (taking the lease, storing the refresh). */
function leaseAttributes(spans: Spans) {
  return { ...spans.db, "db.operation.name": "UPDATE", "db.collection.name": "sessions" };
}

/**
 * Takes the session row's lease (`acquire`), in a "refresh lease" span under
 * `trace` that says how it went; the session's refresh and audience
 * refreshes take the same lease.
 */
export function tracedLease<T>(spans: Spans, trace: TraceContext, lapsed: boolean, acquire: () => Promise<T | null>): Promise<T | null> {
  return spans.run("refresh lease", trace, { attributes: leaseAttributes(spans) }, async (span) => {
    const got = await acquire();
    span?.setAttribute("token_service.lease", got ? (lapsed ? "taken_over" : "acquired") : "held_elsewhere");
    return got;
  });
}
