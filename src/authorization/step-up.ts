import { grantedResources, type SessionRow } from "../db/session-entity.js";
import type { SessionRepository } from "../db/session-repository.js";
import type { ReplacedFields, StepUpRepository } from "../db/step-up-repository.js";
import { sessionRef, type Logger } from "../logger.js";
import type { CodeGrantResult, ProviderClient } from "../providers/provider-client.js";
import { revokeTokens } from "../providers/revoke.js";
import { pollDelayMs, type RowWaiter } from "../refresh/waiter.js";
import { RefreshTimeoutError, SessionNotFoundError } from "../sessions/errors.js";
import { accessTokenExpiry, idTokenExpiry, idTokenIdentity } from "../sessions/expiry.js";
import { requireProviderAllowed, type CallContext } from "../sessions/scope.js";
import type { TokenVault } from "../sessions/token-vault.js";
import type { UserSessions } from "../sessions/user-sessions.js";
import { checkScope, checkToken, checkTokenType, requireSessionId } from "../sessions/validation.js";
import { InvalidCallbackError, StepUpLimitError } from "./errors.js";

const HOUR_MS = 3_600_000;

export interface StepUpDeps {
  sessions: SessionRepository;
  stepUps: StepUpRepository;
  vault: TokenVault;
  waiter: RowWaiter;
  users: UserSessions;
  /** authorization.max_step_ups_per_hour; 0: no step-ups. */
  maxPerHour: number;
  /** The refresh lease: a step-up waits at most two of them for a refresh in flight. */
  leaseMs: number;
  providerTimeoutMs: number;
  logger: Logger;
}

/** The session a step-up starts from. */
export interface StepUpStart {
  sessionId: string;
  /** Its granted scopes, to keep (the union with the new ones is asked for). */
  scopes: string[];
  resources: string[];
  status: SessionRow["status"];
}

/**
 * Step-up in place: a new authorization of an existing session (for more
 * scopes, or to renew one that needs a new login) whose tokens replace the
 * session's own, under the same id. Every holder of the id keeps working;
 * the change is announced like a refresh, so no replica's cache serves the
 * old token, and the session's audience tokens (old scopes) go with it.
 */
export class StepUps {
  constructor(private readonly deps: StepUpDeps) {}

  /**
   * Checks that the session is the user's, at `provider`, and counts one
   * step-up of it (at most maxPerHour in any hour, across replicas).
   */
  async begin(input: { userId: string; provider: string; sessionId: string }, ctx: CallContext): Promise<StepUpStart> {
    const sessionId = requireSessionId(input.sessionId);
    const row = await this.deps.sessions.findById(sessionId);
    // Another user's session, or one at another provider, is answered as an unknown one.
    if (!row || row.userId !== input.userId || row.provider !== input.provider) throw new SessionNotFoundError();
    requireProviderAllowed(ctx, row.provider);
    const max = this.deps.maxPerHour;
    const counted = max === 0 ? "limit" : await this.deps.stepUps.count(row.id, row.userId, new Date(), HOUR_MS, max);
    if (counted === "gone") throw new SessionNotFoundError();
    if (counted === "limit") {
      this.deps.logger.info(
        { audit: true, event: "step_up_refused", caller: ctx.caller, userId: row.userId, provider: row.provider, sid: sessionRef(row.id), max },
        "step-up refused: limit reached",
      );
      throw new StepUpLimitError(max);
    }
    const scopes = row.scope.split(" ").filter((s) => s !== "");
    // A session holding an ID token asks for one again (a resource's token may not list openid in its scope): its `sub` is checked.
    if (row.idCt !== null && !scopes.includes("openid")) scopes.push("openid");
    return { sessionId: row.id, scopes, resources: grantedResources(row.resources), status: row.status };
  }

  /**
   * Writes the tokens of a completed step-up over the session (compare-and-set
   * on its version, never while a refresh holds its lease), then revokes the
   * tokens it replaced at the provider, best effort. The new tokens are
   * revoked instead when the session is gone or names another account.
   */
  async complete(
    input: { sessionId: string; userId: string; provider: ProviderClient; tokens: CodeGrantResult; resources: string[]; scopes: string[] },
    ctx: CallContext,
  ): Promise<{ sessionId: string; expiresAt: Date }> {
    const { provider, tokens } = input;
    const log = this.deps.logger.child({ sid: sessionRef(input.sessionId), provider: provider.id });
    const giveUpAt = Date.now() + 2 * this.deps.leaseMs + 1000;
    const discard = async (err: Error) => {
      await revokeTokens(provider, { refresh: tokens.refreshToken, access: tokens.accessToken }, { deadline: Date.now() + this.deps.providerTimeoutMs }, log);
      return err;
    };
    // Kept across rounds: a change announced while a round reads the row is not missed.
    const watch = this.deps.waiter.watch(input.sessionId);
    try {
      for (let round = 0; ; round++) {
        const row = await this.deps.sessions.findById(input.sessionId);
        if (!row || row.userId !== input.userId || row.provider !== provider.id) throw await discard(new SessionNotFoundError());
        const subject = tokens.subject ?? null;
        if (row.subject !== null && subject !== null && subject !== row.subject) {
          log.warn({ audit: true, event: "step_up_refused", caller: ctx.caller, userId: row.userId, why: "other_account" }, "step-up signed in another account; refused");
          throw await discard(new InvalidCallbackError("other_account"));
        }
        const now = new Date();
        const leased = row.leaseUntil !== null && row.leaseUntil >= now;
        if (!leased) {
          const fields = this.fields(row, input, now);
          const dropped = await this.deps.stepUps.replace(row.id, row.userId, row.version, fields, now);
          if (dropped !== null) {
            await this.deps.waiter.notify(row.id);
            log.info(
              { audit: true, event: "step_up", caller: ctx.caller, userId: row.userId, revived: row.status !== "active", audienceTokens: dropped.length },
              "session stepped up in place",
            );
            await this.retire(row, provider, tokens, dropped, log);
            return { sessionId: row.id, expiresAt: fields.accessExpiresAt };
          }
        }
        if (Date.now() >= giveUpAt) throw await discard(new RefreshTimeoutError());
        await watch.next(pollDelayMs(round));
      }
    } finally {
      watch.close();
    }
  }

  /** The session's columns after the step-up: the new token set sealed for this row, an ID token kept when none came. */
  private fields(row: SessionRow, input: { provider: ProviderClient; tokens: CodeGrantResult; resources: string[]; scopes: string[] }, now: Date): ReplacedFields {
    const t = input.tokens;
    const access = checkToken(t.accessToken, "access_token", true) as string;
    const refresh = checkToken(t.refreshToken ?? "", "refresh_token", false);
    const newId = checkToken(t.idToken ?? "", "id_token", false);
    const id = newId ?? this.deps.vault.openField(row, "id");
    const expiry = accessTokenExpiry({
      accessToken: access,
      expiresInSeconds: t.expiresIn,
      now,
      defaultLifetimeSeconds: input.provider.config.defaultTokenLifetimeSeconds,
    });
    return {
      ...this.deps.vault.sealAll(row, { access, refresh, id }),
      tokenType: checkTokenType(t.tokenType),
      scope: checkScope(t.scope ?? input.scopes.join(" "), "scope"),
      accessExpiresAt: expiry.expiresAt,
      accessIssuedAt: expiry.issuedAt,
      idExpiresAt: newId ? (idTokenExpiry(newId) ?? null) : row.idExpiresAt,
      refreshExpiresAt: t.refreshExpiresIn ? new Date(now.getTime() + t.refreshExpiresIn * 1000) : null,
      ...(newId ? idTokenIdentity(newId) : { subject: row.subject, sid: row.sid }),
      resources: input.resources.length ? JSON.stringify(input.resources) : null,
      // Not scheduled: the background refresher goes by the new token's expiry and issue time until its next refresh.
      refreshAt: null,
      keepAliveAt: null,
    };
  }

  /** The replaced refresh token and audience tokens, revoked at the provider; never throws. */
  private async retire(row: SessionRow, provider: ProviderClient, tokens: CodeGrantResult, dropped: Awaited<ReturnType<StepUpRepository["replace"]>>, log: Logger) {
    let old: string | undefined;
    try {
      old = this.deps.vault.openField(row, "refresh");
    } catch {
      old = undefined;
    }
    if (old !== undefined && old !== tokens.refreshToken) {
      await revokeTokens(provider, { refresh: old }, { deadline: Date.now() + this.deps.providerTimeoutMs }, log);
    }
    await this.deps.users.dropAudienceTokens({ id: row.id, provider: row.provider }, "step_up", dropped ?? []);
  }
}
