import { derivedTokenProvider, type AudienceTokenRepository } from "../db/audience-repository.js";
import type { AudienceTokenRow, LogoutTokenRow } from "../db/provider-entity.js";
import type { EndedSessionRow } from "../db/event-entity.js";
import { grantedResources, type SessionRow } from "../db/session-entity.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, sessionRef, type Logger } from "../logger.js";
import type { CallOptions, ProviderClient, ProviderRegistry } from "../providers/provider-client.js";
import { classifyProviderError } from "../providers/errors.js";
import { revokeTokens } from "../providers/revoke.js";
import type { RefreshCoordinator } from "../refresh/coordinator.js";
import { SessionNotFoundError } from "./errors.js";
import { providersInScope, requireProviderAllowed, type CallContext } from "./scope.js";
import type { TokenVault } from "./token-vault.js";
import { asDomainError } from "./store-errors.js";
import { requireSessionId, requireUserId } from "./validation.js";

/** Most sessions ListSessions returns for one user. */
export const LIST_LIMIT = 1000;
/** Provider revocations run at most this many at once during RevokeUserSessions. */
const REVOKE_CONCURRENCY = 4;

/**
 * A session's status as ListSessions shows it (docs/connection-health.md#session-status):
 * refresh_failing is an active session whose last refresh attempts failed;
 * revoked and logged_out are ended sessions, kept without tokens.
 */
export type SessionHealth = "active" | "refresh_failing" | "reauth_required" | "revoked" | "logged_out";

/** A stored (not ended) session's status, from what its row holds. */
export function sessionHealth(r: Pick<SessionRow, "status" | "refreshFailures">): SessionHealth {
  return r.status === "reauth_required" ? "reauth_required" : (r.refreshFailures ?? 0) > 0 ? "refresh_failing" : "active";
}

/** What ListSessions shows of a session: metadata only, never token material. */
export interface SessionSummary {
  sessionId: string;
  provider: string;
  createdAt: Date;
  lastUsedAt: Date;
  /** null for an ended session. */
  accessExpiresAt: Date | null;
  status: SessionHealth;
  refreshFailures: number;
  failingSince: Date | null;
  lastError: string | null;
  lastErrorAt: Date | null;
  reauthAt: Date | null;
  endedAt: Date | null;
  endReason: string | null;
  keyId: string;
  refreshable: boolean;
  reauthReason: string | null;
  /** RFC 8707 resources granted to the session. */
  resources: string[];
  /** Audience tokens held for the session: resource and expiry only. */
  audienceTokens: Array<{ resource: string; expiresAt: Date }>;
}

/** An ended session as ListSessions shows it: what it was, when and why it ended; no token, no key. */
function endedSummary(r: EndedSessionRow): SessionSummary {
  return {
    sessionId: r.id,
    provider: r.provider,
    createdAt: r.createdAt,
    lastUsedAt: r.lastUsedAt,
    accessExpiresAt: null,
    status: r.status,
    refreshFailures: 0,
    failingSince: null,
    lastError: null,
    lastErrorAt: null,
    reauthAt: null,
    endedAt: r.endedAt,
    endReason: r.reason,
    keyId: "",
    refreshable: false,
    reauthReason: null,
    resources: grantedResources(r.resources),
    audienceTokens: [],
  };
}

/**
 * A user's sessions as a whole: listing them, and logging out (one session,
 * or all of them) here and at the provider.
 */
export class UserSessions {
  constructor(
    private readonly repo: SessionRepository,
    private readonly vault: TokenVault,
    private readonly providers: ProviderRegistry,
    private readonly coordinator: RefreshCoordinator,
    private readonly audiences: AudienceTokenRepository,
    private readonly logger: Logger,
    private readonly options: { providerTimeoutMs: number },
  ) {}

  /**
   * A user's sessions (metadata only), at one provider or every provider the
   * caller may act on; with `includeEnded`, then its ended ones (newest first).
   */
  listSessions(input: { userId: string; provider: string; includeEnded?: boolean }, ctx: CallContext = {}): Promise<SessionSummary[]> {
    return this.list(input, ctx).catch(asDomainError);
  }

  private async list(input: { userId: string; provider: string; includeEnded?: boolean }, ctx: CallContext): Promise<SessionSummary[]> {
    const userId = requireUserId(input.userId);
    const scope = providersInScope(ctx, input.provider);
    const rows = await this.repo.listForUser(userId, scope, LIST_LIMIT);
    const live = await this.summarize(rows);
    if (!input.includeEnded || live.length >= LIST_LIMIT) return live;
    const ended = await this.repo.listEndedForUser(userId, scope, LIST_LIMIT - live.length);
    return [...live, ...ended.map(endedSummary)];
  }

  private async summarize(rows: SessionRow[]): Promise<SessionSummary[]> {
    const held = new Map<string, Array<{ resource: string; expiresAt: Date }>>();
    for (const a of await this.audiences.listForSessions(rows.map((r) => r.id))) {
      const list = held.get(a.sessionId) ?? [];
      list.push({ resource: a.resource, expiresAt: a.expiresAt });
      held.set(a.sessionId, list);
    }
    return rows.map((r) => ({
      sessionId: r.id,
      provider: r.provider,
      createdAt: r.createdAt,
      lastUsedAt: r.lastUsedAt,
      accessExpiresAt: r.accessExpiresAt,
      status: sessionHealth(r),
      refreshFailures: r.status === "active" ? (r.refreshFailures ?? 0) : 0,
      failingSince: r.status === "active" ? (r.failingSince ?? null) : null,
      lastError: r.lastErrorCode,
      lastErrorAt: r.lastErrorAt,
      reauthAt: r.status === "reauth_required" ? (r.reauthAt ?? null) : null,
      endedAt: null,
      endReason: null,
      keyId: r.keyId,
      refreshable: r.refreshCt !== null,
      reauthReason: r.reauthReason,
      resources: grantedResources(r.resources),
      audienceTokens: (held.get(r.id) ?? []).sort((a, b) => a.resource.localeCompare(b.resource)),
    }));
  }

  /** Deletes one session, then revokes its tokens at the provider (best effort). */
  revokeSession(input: { userId: string; sessionId: string }, ctx: CallContext = {}): Promise<void> {
    return this.revokeOne(input, ctx).catch(asDomainError);
  }

  private async revokeOne(input: { userId: string; sessionId: string }, ctx: CallContext): Promise<void> {
    const userId = requireUserId(input.userId);
    const sessionId = requireSessionId(input.sessionId);
    const row = await this.repo.deleteForUser(sessionId, userId, (r) => requireProviderAllowed(ctx, r.provider));
    if (!row) throw new SessionNotFoundError();
    await this.coordinator.announce(row.id);
    const log = this.logger.child({ sid: sessionRef(row.id), provider: row.provider });
    const audience = await this.takeAudienceTokens([row], log);
    log.info({ audit: true, event: "revoke", caller: ctx.caller, userId, audienceTokens: audience.length }, "session revoked");
    await this.revokeAtProvider(row, audience, ctx, log);
  }

  /** Logs a user out everywhere (at one provider, or every provider the caller may act on). */
  revokeUserSessions(input: { userId: string; provider: string }, ctx: CallContext = {}): Promise<number> {
    return this.revokeAll(input, ctx).catch(asDomainError);
  }

  private async revokeAll(input: { userId: string; provider: string }, ctx: CallContext): Promise<number> {
    const userId = requireUserId(input.userId);
    const scope = providersInScope(ctx, input.provider);
    const rows = await this.repo.deleteAllForUser(userId, scope);
    await Promise.all(rows.map((r) => this.coordinator.announce(r.id)));
    this.logger.info(
      { audit: true, event: "revoke_all", caller: ctx.caller, userId, provider: input.provider || undefined, count: rows.length },
      "user logged out everywhere",
    );
    await this.revokeMany(rows, ctx);
    return rows.length;
  }

  /** Deletes every session of a provider and revokes each at the provider (before the provider itself is deleted). */
  revokeProviderSessions(provider: string, ctx: CallContext = {}): Promise<number> {
    return this.revokeProvider(provider, ctx).catch(asDomainError);
  }

  private async revokeProvider(provider: string, ctx: CallContext): Promise<number> {
    const rows = await this.repo.deleteAllForProvider(provider);
    await Promise.all(rows.map((r) => this.coordinator.announce(r.id)));
    for (const row of rows) {
      this.logger.info(
        { audit: true, event: "revoke", reason: "provider_deleted", caller: ctx.caller, userId: row.userId, provider, sid: sessionRef(row.id) },
        "session revoked with its provider",
      );
    }
    await this.revokeMany(rows, ctx);
    return rows.length;
  }

  /**
   * Back-channel logout: deletes the provider's sessions whose ID token had
   * this `sid` (or, without one, this `sub`). The provider ended them, so
   * they are not revoked there again. The logout token (`seen`, its `jti`)
   * is recorded in the same transaction as the deletes; "replayed" when it
   * was recorded before, and then nothing is deleted. Returns the rows deleted.
   */
  logout(provider: string, by: { sid: string } | { subject: string }, seen: LogoutTokenRow, ctx: CallContext = {}): Promise<SessionRow[] | "replayed"> {
    return this.logoutBy(provider, by, seen, ctx).catch(asDomainError);
  }

  private async logoutBy(provider: string, by: { sid: string } | { subject: string }, seen: LogoutTokenRow, ctx: CallContext): Promise<SessionRow[] | "replayed"> {
    const rows = await this.repo.deleteForLogoutOnce(provider, by, seen);
    if (rows === "replayed") return rows;
    await Promise.all(rows.map((r) => this.coordinator.announce(r.id)));
    // The provider ended the login: its audience tokens are deleted here, not revoked there again.
    await this.takeAudienceTokens(rows, this.logger.child({ provider }));
    for (const row of rows) {
      this.logger.info(
        {
          audit: true,
          event: "backchannel_logout",
          caller: ctx.caller,
          userId: row.userId,
          provider,
          sid: sessionRef(row.id),
          matched: "sid" in by ? "sid" : "sub",
        },
        "session ended by the provider (back-channel logout)",
      );
    }
    return rows;
  }

  /**
   * A session's audience tokens, after its refresh token was refused (REAUTH_REQUIRED)
   * or its login replaced (a step-up, which deleted them already: `taken`):
   * deleted here and revoked at the provider (best effort). Never throws.
   */
  async dropAudienceTokens(session: { id: string; provider: string }, reason = "reauth_required", taken?: AudienceTokenRow[]): Promise<void> {
    const log = this.logger.child({ sid: sessionRef(session.id), provider: session.provider });
    const audience = taken ?? (await this.takeAudienceTokens([session], log));
    if (audience.length === 0) return;
    log.info({ audit: true, event: "audience_tokens_dropped", reason, count: audience.length }, "audience tokens deleted with the session's login");
    const provider = this.providers.get(session.provider);
    if (provider) await this.revokeAudienceTokens(provider, audience, { deadline: Date.now() + this.options.providerTimeoutMs }, log);
  }

  /** Deletes the sessions' audience tokens and returns them; a failure is logged (the sweeper removes orphans later). */
  private async takeAudienceTokens(rows: Array<{ id: string }>, log: Logger): Promise<AudienceTokenRow[]> {
    try {
      return await this.audiences.deleteForSessions(rows.map((r) => r.id));
    } catch (err) {
      log.warn({ err: errSummary(err) }, "audience tokens not deleted now; the sweeper removes them with their session gone");
      return [];
    }
  }

  /** Provider revocations, a few at a time, each bounded by the provider timeout. */
  private async revokeMany(rows: SessionRow[], ctx: CallContext): Promise<void> {
    const audience = await this.takeAudienceTokens(rows, this.logger);
    const queue = [...rows];
    const worker = async () => {
      for (let row = queue.shift(); row; row = queue.shift()) {
        const id = row.id;
        const log = this.logger.child({ sid: sessionRef(id), provider: row.provider });
        await this.revokeAtProvider(row, audience.filter((a) => a.sessionId === id), ctx, log);
      }
    };
    await Promise.all(Array.from({ length: Math.min(REVOKE_CONCURRENCY, rows.length) }, worker));
  }

  private async revokeAtProvider(row: SessionRow, audience: AudienceTokenRow[], ctx: CallContext, log: Logger): Promise<void> {
    const provider = this.providers.get(row.provider);
    if (!provider) {
      log.warn("provider no longer configured; tokens not revoked there");
      return;
    }
    let tokens: { refresh: string | undefined; access: string | undefined };
    try {
      tokens = { refresh: this.vault.openField(row, "refresh"), access: this.vault.openField(row, "access") };
    } catch (err) {
      log.warn({ err: errSummary(err) }, "cannot decrypt the session's tokens; not revoked at the provider");
      return;
    }
    const deadline = Math.min(Date.now() + this.options.providerTimeoutMs, ctx.deadline ?? Infinity);
    await revokeTokens(provider, tokens, { deadline, trace: ctx.trace }, log);
    await this.revokeAudienceTokens(provider, audience, { deadline, trace: ctx.trace }, log);
  }

  /**
   * RFC 7009 revocation of audience access tokens, best effort: a token that
   * does not open is skipped, a refusal is logged (many providers cannot
   * revoke JWT access tokens; those lapse at their expiry), and a provider
   * without a revocation endpoint is not asked again.
   */
  private async revokeAudienceTokens(provider: ProviderClient, audience: AudienceTokenRow[], options: CallOptions, log: Logger): Promise<void> {
    const noEndpoint = new Set<string>();
    for (const a of audience) {
      const alog = log.child({ resource: a.resource });
      // A derived (ID-JAG) token is its enterprise-managed provider's: revoked at that authorization server.
      const derived = derivedTokenProvider(a.resource);
      const at = derived === undefined ? provider : this.providers.get(derived);
      if (!at || noEndpoint.has(at.id)) continue;
      let access: string;
      try {
        access = this.vault.openAudience(a);
      } catch (err) {
        alog.warn({ err: errSummary(err) }, "cannot decrypt an audience token; not revoked at the provider");
        continue;
      }
      try {
        if (!(await at.revoke(access, "access_token", options))) noEndpoint.add(at.id);
        else alog.info({ provider: at.id }, "audience token revoked at the provider");
      } catch (err) {
        alog.warn({ code: classifyProviderError(err).code }, "revocation of an audience token at the provider failed; it lapses at its expiry");
      }
    }
  }
}
