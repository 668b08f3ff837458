import { randomBytes } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";
import type { RefreshConfig } from "../config.js";
import { audienceTokenId, type AudienceTokenRepository } from "../db/audience-repository.js";
import type { AudienceTokenRow } from "../db/provider-entity.js";
import { headOf, type SessionHead, type SessionRow } from "../db/session-entity.js";
import { DatabaseUnavailableError, type SessionRepository } from "../db/session-repository.js";
import { errSummary, sessionRef, type Logger } from "../logger.js";
import { revokeTokens } from "../providers/revoke.js";
import { classifyProviderError } from "../providers/errors.js";
import type { CallOptions, ProviderClient, ProviderRegistry, ProviderTokens } from "../providers/provider-client.js";
import {
  ExchangeRefusedError,
  ProviderUnavailableError,
  ReauthRequiredError,
  RefreshTimeoutError,
  ResourceNotGrantedError,
  SessionNotFoundError,
} from "../sessions/errors.js";
import { accessTokenExpiry, lifetimeSeconds, requiredValiditySeconds, secondsLeft } from "../sessions/expiry.js";
import type { TokenVault } from "../sessions/token-vault.js";
import { tracedLease, type RefreshCoordinator } from "./coordinator.js";
import { NO_SPANS, sessionAttributes, type Spans, type TraceContext } from "../tracing/spans.js";
import { pollDelayMs, type RowWaiter } from "./waiter.js";

/** An audience token in clear, as GetToken hands it out. */
export interface AudienceToken {
  token: string;
  tokenType: string;
  scope: string;
  expiresAt: Date;
  issuedAt: Date;
}

/** How long an audience token must stay valid: as for the session's own token (GetToken's min_valid_seconds, else the margin). */
export interface AudienceWant {
  minValidSeconds: number;
  marginSeconds: number;
}

/** Whether a held audience token is good enough for `want` at `now` (capped at half its lifetime, as for session tokens). */
export function audienceFresh(token: { expiresAt: Date; issuedAt: Date }, want: AudienceWant, now: Date): boolean {
  const required = requiredValiditySeconds({
    minValidSeconds: want.minValidSeconds,
    configuredMarginSeconds: want.marginSeconds,
    lifetimeSeconds: lifetimeSeconds(token.issuedAt, token.expiresAt),
  });
  return secondsLeft(token.expiresAt, now) >= required;
}

/**
 * A token derived from the session rather than refreshed from it (ID-JAG): it
 * is obtained at another provider with the session's ID token, kept in an
 * audience row under `key`, and held under the session row's lease like any
 * audience token. Its failures never touch the session.
 */
export interface DerivedGrant {
  /** The audience row's key; never an ordinary resource (see derivedTokenKey). */
  key: string;
  /** The provider whose token it is: its defaults apply, and a token obtained for a revoked session is revoked there. */
  provider: ProviderClient;
  /** Whether the session's ID token is too old to present: the session is refreshed first (once). */
  subjectStale(row: SessionRow, now: Date): boolean;
  /** Obtains the token with the session's ID token; throws domain errors. */
  obtain(idToken: string | undefined, options: CallOptions): Promise<ProviderTokens>;
}

/** Outcome hook, for audit lines and metrics (the resource is an identifier, never a secret). */
export type AudienceListener = (event: { sessionId: string; provider: string; resource: string; outcome: "success" | "not_granted" | "reauth_required" | "unavailable"; ms: number }) => void;

/**
 * Audience tokens: a session's access token per RFC 8707 resource, kept in
 * its own row and refreshed just in time with the same guarantees as the
 * session's own token.
 *
 * Every audience refresh holds the session row's lease, the same lease the
 * session's own refresh takes: the refresh token is one per session, so two
 * audiences (or an audience and the session) never send it at once, and a
 * rotated refresh token is written to the session, under that lease, before
 * the audience token is stored or handed out. In process, callers of one
 * (session, resource) share one promise; across replicas, the others wait for
 * the session row to move (NOTIFY, or polling) and then read the audience row.
 */
export class AudienceCoordinator {
  private readonly inflight = new Map<string, Promise<AudienceToken>>();
  private readonly listeners: AudienceListener[] = [];
  private readonly leaseSafetyMs: number;
  readonly stats = { started: 0, coalesced: 0 };

  constructor(
    private readonly repo: SessionRepository,
    private readonly audiences: AudienceTokenRepository,
    private readonly vault: TokenVault,
    private readonly providers: ProviderRegistry,
    private readonly sessions: RefreshCoordinator,
    private readonly waiter: RowWaiter,
    private readonly config: RefreshConfig,
    private readonly logger: Logger,
    private readonly spans: Spans = NO_SPANS,
  ) {
    this.leaseSafetyMs = Math.min(11_000, Math.floor(config.leaseMs / 3));
  }

  onOutcome(listener: AudienceListener): void {
    this.listeners.push(listener);
  }

  /**
   * The session's token for `resource`, valid for as long as `want` asks
   * (or fresh, with `force`). The caller has checked that the session is
   * active and, in refresh mode, that the resource was granted. With
   * `derived`, `resource` is its key and the token is obtained its way.
   */
  get(head: SessionHead, resource: string, want: AudienceWant, force: boolean, caller: string, trace?: TraceContext, derived?: DerivedGrant): Promise<AudienceToken> {
    if (!trace) return this.share(head, resource, want, force, caller, undefined, derived);
    const coalesced = !force && this.inflight.has(`${head.id}\u0000${resource}`);
    const attributes = { ...sessionAttributes(head.id, head.provider), "token_service.resource": resource, "token_service.coalesced": coalesced };
    return this.spans.run("audience refresh", trace, { attributes }, (_span, ctx) => this.share(head, resource, want, force, caller, ctx, derived));
  }

  private share(head: SessionHead, resource: string, want: AudienceWant, force: boolean, caller: string, trace: TraceContext, derived: DerivedGrant | undefined): Promise<AudienceToken> {
    const key = `${head.id}\u0000${resource}`;
    const existing = this.inflight.get(key);
    if (existing && !force) {
      this.stats.coalesced++;
      // The shared result was good enough for whoever started it; a caller asking for longer validity checks again.
      return existing.then((t) => (audienceFresh(t, want, new Date()) ? t : this.run(head, resource, want, false, caller, false, trace, derived)));
    }
    const p = this.run(head, resource, want, force, caller, false, trace, derived).finally(() => {
      if (this.inflight.get(key) === p) this.inflight.delete(key);
    });
    this.inflight.set(key, p);
    return p;
  }

  /** Waits (at most `maxMs`) for audience refreshes in flight, so that a rotated refresh token is stored before shutdown. */
  async drain(maxMs: number): Promise<void> {
    const deadline = Date.now() + maxMs;
    while (this.inflight.size > 0 && Date.now() < deadline) {
      await Promise.race([Promise.allSettled([...this.inflight.values()]), sleep(Math.max(1, deadline - Date.now()))]);
    }
  }

  /** The held token in clear; undefined when it cannot be opened (its key is gone, or it is damaged): it is then obtained anew. */
  private open(row: AudienceTokenRow): AudienceToken | undefined {
    try {
      return { token: this.vault.openAudience(row), tokenType: row.tokenType, scope: row.scope, expiresAt: row.expiresAt, issuedAt: row.issuedAt };
    } catch (err) {
      this.logger.warn({ sid: sessionRef(row.sessionId), resource: row.resource, err: errSummary(err) }, "held audience token cannot be opened; obtaining a new one");
      return undefined;
    }
  }

  /**
   * `subjectRefreshed`: exchange mode has already refreshed the session's own
   * token once for this call; it is not refreshed again, whatever its expiry.
   */
  private async run(
    head: SessionHead,
    resource: string,
    want: AudienceWant,
    force: boolean,
    caller: string,
    subjectRefreshed: boolean,
    trace: TraceContext,
    derived?: DerivedGrant,
  ): Promise<AudienceToken> {
    const giveUpAt = Date.now() + 2 * this.config.leaseMs + 1000;
    const startedAt = new Date();
    const good = (row: AudienceTokenRow | null) =>
      row !== null && (!force || row.updatedAt >= startedAt) && audienceFresh(row, want, new Date());
    // Kept across rounds: a change announced while a round reads or tries the lease is not missed.
    const watch = this.waiter.watch(head.id);
    try {
      for (let round = 0; ; round++) {
        const held = await this.audiences.find(head.id, resource);
        const usable = good(held) ? this.open(held!) : undefined;
        if (usable) return usable;
        const session = await this.repo.findById(head.id);
        if (!session) throw new SessionNotFoundError();
        if (session.status !== "active") throw new ReauthRequiredError(session.reauthReason ?? "reauth_required", session.provider);
        const now = new Date();
        const until = new Date(now.getTime() + this.config.leaseMs);
        const owner = `${this.sessions.replicaId}:${randomBytes(4).toString("hex")}`;
        const leased = await tracedLease(this.spans, trace, false, () => this.repo.acquireLease(session.id, session.version, owner, now, until));
        if (leased) {
          const outcome = await this.holding(leased, resource, owner, until, caller, subjectRefreshed, good, trace, derived);
          if (outcome !== "refresh_subject_first") return outcome;
          // Exchange mode and derived tokens: the subject token must be valid. The session's own refresh takes the same lease (given back above).
          await this.sessions.refresh(headOf(leased), undefined, caller, trace);
          return this.run(headOf(leased), resource, want, force, caller, true, trace, derived);
        }
        if (Date.now() >= giveUpAt) throw new RefreshTimeoutError();
        await watch.next(pollDelayMs(round));
      }
    } finally {
      watch.close();
    }
  }

  /**
   * Holding the session's lease: hands out an audience token stored meanwhile,
   * or obtains one. The lease is given back on every path, an exception included.
   */
  private async holding(
    row: SessionRow,
    resource: string,
    owner: string,
    leaseUntil: Date,
    caller: string,
    subjectRefreshed: boolean,
    good: (row: AudienceTokenRow | null) => boolean,
    trace: TraceContext,
    derived: DerivedGrant | undefined,
  ): Promise<AudienceToken | "refresh_subject_first"> {
    let handedOff = false;
    try {
      // Another replica may have stored this audience's token just before we got the lease.
      const again = await this.audiences.find(row.id, resource);
      const stored = good(again) ? this.open(again!) : undefined;
      if (stored) return stored;
      const mode = this.providers.get(row.provider)?.config.audienceTokens;
      const stale = derived ? derived.subjectStale(row, new Date()) : mode === "exchange" && secondsLeft(row.accessExpiresAt, new Date()) < 5;
      if (stale && !subjectRefreshed) return "refresh_subject_first";
      handedOff = true;
      return await this.refreshHolding(row, resource, owner, leaseUntil, caller, trace, derived);
    } finally {
      if (!handedOff) await this.releaseQuietly(row.id, owner);
    }
  }

  private releaseQuietly(id: string, owner: string): Promise<unknown> {
    return this.repo
      .releaseLeaseClean(id, owner)
      .catch((err: unknown) => this.logger.warn({ sid: sessionRef(id), err: errSummary(err) }, "could not release the refresh lease; it will lapse"));
  }

  /**
   * Holding the session's lease: asks the provider, stores a rotated refresh
   * token first (giving the lease back with it), then the audience token. The
   * lease is given back on every path. Audience failures are not recorded on
   * the session's row: they say nothing about the session's own refresh.
   */
  private async refreshHolding(
    row: SessionRow,
    resource: string,
    owner: string,
    leaseUntil: Date,
    caller: string,
    trace: TraceContext,
    derived: DerivedGrant | undefined,
  ): Promise<AudienceToken> {
    const started = Date.now();
    const log = this.logger.child({ sid: sessionRef(row.id), provider: row.provider, caller, userId: row.userId, resource });
    const emit = (outcome: Parameters<AudienceListener>[0]["outcome"]) =>
      this.listeners.forEach((l) => l({ sessionId: row.id, provider: row.provider, resource, outcome, ms: Date.now() - started }));
    let leaseHeld = true;
    try {
      const provider = derived?.provider ?? this.providers.get(row.provider);
      if (!provider) throw new ProviderUnavailableError("provider_not_configured", row.provider);
      const mode = derived ? "derived" : provider.config.audienceTokens;
      const tokens = this.vault.openAll(row);
      const deadline = leaseUntil.getTime() - this.leaseSafetyMs;
      this.stats.started++;
      let response: ProviderTokens;
      try {
        if (derived) {
          response = await derived.obtain(tokens.id, { deadline, trace });
        } else if (mode === "exchange") {
          response = await provider.exchange(tokens.access, { resource, send: provider.config.exchangeTarget }, { deadline, trace });
        } else {
          // Without a refresh token no audience token can be had; the session's own token may still serve, so it is not marked.
          if (!tokens.refresh) throw new ReauthRequiredError("no_refresh_token", row.provider);
          response = await provider.refresh(tokens.refresh, { deadline, resource, grantedScope: row.scope, trace });
        }
      } catch (err) {
        if (err instanceof ReauthRequiredError) throw err;
        if (derived) {
          // The derived token's failure (domain errors already) leaves the session as it is; the lease goes back clean.
          log.warn({ audit: true, event: "audience_refresh", outcome: "failure", mode, code: (err as { code?: string }).code }, "derived token not obtained; session kept");
          emit("unavailable");
          throw err;
        }
        const failure = await this.failed(err, row, owner, resource, mode, log, emit);
        if (failure.leaseReleased) leaseHeld = false;
        throw failure.error;
      }

      const now = new Date();
      const expiry = accessTokenExpiry({
        accessToken: response.accessToken,
        expiresInSeconds: response.expiresIn,
        now,
        defaultLifetimeSeconds: provider.config.defaultTokenLifetimeSeconds,
      });
      const rotated = mode === "refresh" && response.refreshToken !== undefined && response.refreshToken !== tokens.refresh;
      const sealedAccess = this.vault.sealAudience(row.id, resource, response.accessToken);
      const stored: AudienceTokenRow = {
        id: audienceTokenId(row.id, resource),
        sessionId: row.id,
        resource,
        keyId: sealedAccess.keyId,
        accessCt: sealedAccess.blob,
        tokenType: response.tokenType,
        scope: response.scope ?? "",
        expiresAt: expiry.expiresAt,
        issuedAt: expiry.issuedAt,
        updatedAt: now,
      };
      if (rotated) {
        // A rotated refresh token is the session's, for every audience: stored (and the lease given back) before anything else.
        const kept = await this.storeRotated(row, owner, { ...tokens, refresh: response.refreshToken }, response, now, leaseUntil, log);
        leaseHeld = false;
        if (!kept) throw await this.sessionGone(row, provider, response, rotated, log, emit);
        await this.audiences.upsert(stored);
      } else {
        // Stored while the lease is still held, so a replica waiting for the lease finds the token once it gets it
        // (given back first, a waiter could take the lease before the token was written, and ask again).
        await this.audiences.upsert(stored);
        const kept = await this.repo.releaseLeaseClean(row.id, owner);
        leaseHeld = false;
        if (!kept) {
          await this.audiences.deleteIfUnchanged(stored).catch(() => undefined);
          throw await this.sessionGone(row, provider, response, rotated, log, emit);
        }
      }
      // A revoke that ran between giving the lease back and the write above would leave this token behind: look once more.
      const after = await this.repo.findById(row.id);
      if (after === null) {
        await this.audiences.deleteForSessions([row.id]).catch(() => undefined);
        throw await this.sessionGone(row, provider, response, false, log, emit);
      }
      // A step-up replaced the session's tokens meanwhile (and deleted its audience tokens): this one carries the old
      // scopes, so it is not kept for others. (A refresh that changed the granted scope costs one more refresh at worst.)
      if (after.version !== row.version + (rotated ? 1 : 0) && after.scope !== row.scope) {
        await this.audiences.deleteIfUnchanged(stored).catch(() => undefined);
      }
      await this.waiter.notify(row.id);
      log.info({ audit: true, event: "audience_refresh", outcome: "success", mode, rotated, ms: Date.now() - started }, "audience token refreshed");
      emit("success");
      return { token: response.accessToken, tokenType: stored.tokenType, scope: stored.scope, expiresAt: stored.expiresAt, issuedAt: stored.issuedAt };
    } finally {
      if (leaseHeld) await this.releaseQuietly(row.id, owner);
    }
  }

  /**
   * Writes the session's rotated refresh token under the lease (giving it
   * back), retrying a database error while the lease lasts, as the session's
   * own refresh does. False when the lease was no longer ours (the session was
   * deleted, or the lease lapsed and was taken over).
   */
  private async storeRotated(
    row: SessionRow,
    owner: string,
    tokens: { access: string; refresh: string | undefined; id: string | undefined },
    response: ProviderTokens,
    now: Date,
    leaseUntil: Date,
    log: Logger,
  ): Promise<boolean> {
    const sealed = this.vault.sealAll(row, tokens);
    const refreshExpiresAt =
      response.refreshExpiresIn !== undefined && response.refreshExpiresIn > 0 ? new Date(now.getTime() + response.refreshExpiresIn * 1000) : null;
    for (let attempt = 1; ; attempt++) {
      try {
        // A rotated refresh token keeps the session alive as its own refresh would.
        const { keepAliveAt } = this.sessions.schedule.dueTimes({ ...row, refreshExpiresAt }, now);
        if (await this.repo.storeSessionTokens(row.id, owner, row.version, { ...sealed, refreshExpiresAt, keepAliveAt }, now)) return true;
        if (attempt === 1) return false;
        // A retry after an error whose first attempt did commit finds its own write there.
        const current = await this.repo.findById(row.id);
        return current !== null && current.version === row.version + 1 && current.refreshCt !== null && Buffer.compare(current.refreshCt, sealed.refreshCt!) === 0;
      } catch (err) {
        const retryable = err instanceof DatabaseUnavailableError && Date.now() + 250 * attempt < leaseUntil.getTime();
        log.error({ err: errSummary(err), attempt, retrying: retryable }, "could not store the rotated refresh token");
        if (!retryable) throw err;
        await sleep(250 * attempt);
      }
    }
  }

  /**
   * The session was deleted (revoked) while its audience token was obtained,
   * or the lease was lost: the new tokens are revoked at the provider (best
   * effort) and never handed out.
   */
  private async sessionGone(
    row: SessionRow,
    provider: ProviderClient,
    response: ProviderTokens,
    rotated: boolean,
    log: Logger,
    emit: (outcome: Parameters<AudienceListener>[0]["outcome"]) => void,
  ): Promise<Error> {
    const gone = (await this.repo.findById(row.id).catch(() => row)) === null;
    log.warn({ gone }, gone ? "session revoked while its audience token was obtained; the new tokens are revoked" : "refresh lease lost before the tokens were stored; audience token discarded");
    emit("unavailable");
    if (gone) {
      await revokeTokens(provider, { refresh: rotated ? response.refreshToken : undefined, access: response.accessToken }, { deadline: Date.now() + this.config.providerTimeoutMs }, log);
      return new SessionNotFoundError();
    }
    return new ProviderUnavailableError("lease_lost", row.provider);
  }

  /**
   * A failed audience refresh as the caller should see it. The lease is given
   * back clean (an audience's failure says nothing about the session's own
   * refresh), or with the session marked when the refresh token was refused.
   */
  private async failed(
    err: unknown,
    row: SessionRow,
    owner: string,
    resource: string,
    mode: ProviderClient["config"]["audienceTokens"] | "derived",
    log: Logger,
    emit: (outcome: Parameters<AudienceListener>[0]["outcome"]) => void,
  ): Promise<{ error: Error; leaseReleased: boolean }> {
    const e = classifyProviderError(err);
    if (e.code === "invalid_target") {
      // Not a target this session (or this exchange) may have: the session itself is untouched.
      log.warn({ audit: true, event: "audience_refresh", outcome: "not_granted", mode }, "provider refused the resource as a target");
      emit("not_granted");
      return { error: new ResourceNotGrantedError(resource), leaseReleased: false };
    }
    if (e.kind === "rejected" && mode === "refresh") {
      // The refresh token itself was refused: the session needs a new login, as for its own refresh.
      // Its audience tokens go with it: the reauth_required outcome hands them to UserSessions.dropAudienceTokens.
      const marked = await this.repo.markReauth(row.id, row.version, owner, e.code, new Date());
      if (!marked && (await this.repo.findById(row.id)) === null) {
        // Revoked meanwhile (its revocation at the provider is likely why the refresh token was refused).
        emit("unavailable");
        return { error: new SessionNotFoundError(), leaseReleased: true };
      }
      await this.waiter.notify(row.id);
      log.warn({ audit: true, event: "reauth_required", reason: e.code }, "provider rejected the refresh for an audience; the session needs a new login");
      if (marked) emit("reauth_required");
      return { error: new ReauthRequiredError(e.code, row.provider, { cause: e }), leaseReleased: marked };
    }
    log.warn({ audit: true, event: "audience_refresh", outcome: "failure", mode, code: e.code }, "audience token not obtained; session kept");
    emit("unavailable");
    if (mode === "exchange" && e.options.status !== undefined && e.options.status < 500 && e.options.status !== 429) {
      return { error: new ExchangeRefusedError(e.code, row.provider, { cause: e }), leaseReleased: false };
    }
    return { error: new ProviderUnavailableError(e.code, row.provider, { cause: e }), leaseReleased: false };
  }
}
