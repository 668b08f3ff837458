import { randomBytes } from "node:crypto";
import type { RefreshConfig } from "../config.js";
import { audienceTokenId, type AudienceTokenRepository } from "../db/audience-repository.js";
import type { AudienceTokenRow } from "../db/provider-entity.js";
import { headOf, type SessionHead, type SessionRow } from "../db/session-entity.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, sessionRef, type Logger } from "../logger.js";
import { classifyProviderError } from "../providers/errors.js";
import type { ProviderClient, ProviderRegistry, ProviderTokens } from "../providers/provider-client.js";
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
import type { RefreshCoordinator } from "./coordinator.js";
import type { RowWaiter } from "./waiter.js";

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

/** Outcome hook, for audit lines and metrics (the resource is an identifier, never a secret). */
export type AudienceListener = (event: { sessionId: string; provider: string; resource: string; outcome: "success" | "not_granted" | "reauth_required" | "unavailable"; ms: number }) => void;

function backoffMs(round: number): number {
  return Math.min(100, 10 * 2 ** round);
}

/** The resources a session was granted (JSON array), or none. */
export function grantedResources(resources: string | null): string[] {
  if (!resources) return [];
  try {
    const list: unknown = JSON.parse(resources);
    return Array.isArray(list) ? list.filter((r): r is string => typeof r === "string") : [];
  } catch {
    return [];
  }
}

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
  ) {
    this.leaseSafetyMs = Math.min(11_000, Math.floor(config.leaseMs / 3));
  }

  onOutcome(listener: AudienceListener): void {
    this.listeners.push(listener);
  }

  /**
   * The session's token for `resource`, valid for as long as `want` asks
   * (or fresh, with `force`). The caller has checked that the session is
   * active and, in refresh mode, that the resource was granted.
   */
  get(head: SessionHead, resource: string, want: AudienceWant, force: boolean, caller: string): Promise<AudienceToken> {
    const key = `${head.id}\u0000${resource}`;
    const existing = this.inflight.get(key);
    if (existing && !force) {
      this.stats.coalesced++;
      return existing;
    }
    const p = this.run(head, resource, want, force, caller).finally(() => {
      if (this.inflight.get(key) === p) this.inflight.delete(key);
    });
    this.inflight.set(key, p);
    return p;
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

  private async run(head: SessionHead, resource: string, want: AudienceWant, force: boolean, caller: string): Promise<AudienceToken> {
    const giveUpAt = Date.now() + 2 * this.config.leaseMs + 1000;
    const startedAt = new Date();
    for (let round = 0; ; round++) {
      const held = await this.audiences.find(head.id, resource);
      const good = (row: AudienceTokenRow | null) =>
        row !== null && (!force || row.updatedAt >= startedAt) && audienceFresh(row, want, new Date());
      const usable = good(held) ? this.open(held!) : undefined;
      if (usable) return usable;
      const session = await this.repo.findById(head.id);
      if (!session) throw new SessionNotFoundError();
      if (session.status !== "active") throw new ReauthRequiredError(session.reauthReason ?? "reauth_required", session.provider);
      const now = new Date();
      const until = new Date(now.getTime() + this.config.leaseMs);
      const owner = `${this.sessions.replicaId}:${randomBytes(4).toString("hex")}`;
      const leased = await this.repo.acquireLease(session.id, session.version, owner, now, until);
      if (leased) {
        // Another replica may have stored this audience's token just before we got the lease.
        const again = await this.audiences.find(head.id, resource);
        const stored = good(again) ? this.open(again!) : undefined;
        if (stored) {
          await this.repo.releaseLeaseClean(leased.id, owner);
          return stored;
        }
        return this.refreshHolding(leased, resource, owner, until, caller);
      }
      if (Date.now() >= giveUpAt) throw new RefreshTimeoutError();
      await this.waiter.wait(session.id, backoffMs(round));
    }
  }

  /** Holding the session's lease: asks the provider, stores a rotated refresh token first, then the audience token. */
  private async refreshHolding(row: SessionRow, resource: string, owner: string, leaseUntil: Date, caller: string): Promise<AudienceToken> {
    const started = Date.now();
    const log = this.logger.child({ sid: sessionRef(row.id), provider: row.provider, caller, userId: row.userId, resource });
    const release = (code?: string) =>
      (code ? this.repo.releaseLease(row.id, owner, code, new Date()) : this.repo.releaseLeaseClean(row.id, owner)).catch((err: unknown) =>
        log.warn({ err: errSummary(err) }, "could not release the refresh lease; it will lapse"),
      );
    const emit = (outcome: Parameters<AudienceListener>[0]["outcome"]) =>
      this.listeners.forEach((l) => l({ sessionId: row.id, provider: row.provider, resource, outcome, ms: Date.now() - started }));
    const provider = this.providers.get(row.provider);
    if (!provider) {
      await release("provider_not_configured");
      throw new ProviderUnavailableError("provider_not_configured", row.provider);
    }
    const mode = provider.config.audienceTokens;
    let tokens;
    try {
      tokens = this.vault.openAll(row);
    } catch (err) {
      await release("local_error");
      throw err;
    }
    const deadline = leaseUntil.getTime() - this.leaseSafetyMs;
    this.stats.started++;
    let response: ProviderTokens;
    try {
      if (mode === "exchange") {
        if (secondsLeft(row.accessExpiresAt, new Date()) < 5) {
          // The subject token must be valid: refresh the session itself first (it takes the same lease).
          await release();
          await this.sessions.refresh(headOf(row), undefined, caller);
          return this.run(headOf(row), resource, { minValidSeconds: 0, marginSeconds: 0 }, true, caller);
        }
        response = await provider.exchange(tokens.access, { resource, send: provider.config.exchangeTarget }, { deadline });
      } else {
        if (!tokens.refresh) {
          await release("no_refresh_token");
          throw new ReauthRequiredError("no_refresh_token", row.provider);
        }
        response = await provider.refresh(tokens.refresh, { deadline, resource });
      }
    } catch (err) {
      if (err instanceof ReauthRequiredError || err instanceof ProviderUnavailableError) throw err;
      throw await this.failed(err, row, owner, resource, mode, log, emit, release);
    }

    const now = new Date();
    const expiry = accessTokenExpiry({
      accessToken: response.accessToken,
      expiresInSeconds: response.expiresIn,
      now,
      defaultLifetimeSeconds: provider.config.defaultTokenLifetimeSeconds,
    });
    // A rotated refresh token is the session's, for every audience: stored under the lease before anything else.
    if (mode === "refresh" && response.refreshToken && response.refreshToken !== tokens.refresh) {
      const sealed = this.vault.sealAll(row, { ...tokens, refresh: response.refreshToken });
      const refreshExpiresAt =
        response.refreshExpiresIn !== undefined && response.refreshExpiresIn > 0 ? new Date(now.getTime() + response.refreshExpiresIn * 1000) : null;
      if (!(await this.repo.storeSessionTokens(row.id, owner, row.version, { ...sealed, refreshExpiresAt }, now))) {
        log.error("refresh lease was lost before the rotated refresh token was stored; audience token discarded");
        emit("unavailable");
        throw new ProviderUnavailableError("lease_lost", row.provider);
      }
    } else {
      await release();
    }
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
    await this.audiences.upsert(stored);
    await this.waiter.notify(row.id);
    log.info({ audit: true, event: "audience_refresh", outcome: "success", mode, ms: Date.now() - started }, "audience token refreshed");
    emit("success");
    return { token: response.accessToken, tokenType: stored.tokenType, scope: stored.scope, expiresAt: stored.expiresAt, issuedAt: stored.issuedAt };
  }

  /** A failed audience refresh as the caller should see it; the lease is given back (or the session marked). */
  private async failed(
    err: unknown,
    row: SessionRow,
    owner: string,
    resource: string,
    mode: ProviderClient["config"]["audienceTokens"],
    log: Logger,
    emit: (outcome: Parameters<AudienceListener>[0]["outcome"]) => void,
    release: (code?: string) => Promise<unknown>,
  ): Promise<Error> {
    const e = classifyProviderError(err);
    if (e.code === "invalid_target") {
      // Not a target this session (or this exchange) may have: the session itself is untouched.
      await release();
      log.warn({ audit: true, event: "audience_refresh", outcome: "not_granted", mode }, "provider refused the resource as a target");
      emit("not_granted");
      return new ResourceNotGrantedError(resource);
    }
    if (e.kind === "rejected" && mode === "refresh") {
      // The refresh token itself was refused: the session needs a new login, as for its own refresh.
      // Its audience tokens go with it: the reauth_required outcome hands them to UserSessions.dropAudienceTokens.
      await this.repo.markReauth(row.id, row.version, owner, e.code, new Date());
      await this.waiter.notify(row.id);
      log.warn({ audit: true, event: "reauth_required", reason: e.code }, "provider rejected the refresh for an audience; the session needs a new login");
      emit("reauth_required");
      return new ReauthRequiredError(e.code, row.provider, { cause: e });
    }
    await release(e.code);
    log.warn({ audit: true, event: "audience_refresh", outcome: "failure", mode, code: e.code }, "audience token not obtained; session kept");
    emit("unavailable");
    if (mode === "exchange" && e.options.status !== undefined && e.options.status < 500 && e.options.status !== 429) {
      return new ExchangeRefusedError(e.code, row.provider, { cause: e });
    }
    return new ProviderUnavailableError(e.code, row.provider, { cause: e });
  }
}
