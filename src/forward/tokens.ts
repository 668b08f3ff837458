import {
  ReauthRequiredError,
  ResourceNotGrantedError,
  SessionNotFoundError,
} from "../sessions/errors.js";
import { NoIdpSessionError } from "../sessions/id-jag-errors.js";
import type { CallContext, SessionService, TokenAnswer } from "../sessions/session-service.js";
import type { ForwardTarget } from "./config.js";

/** Where the injected token came from, as metrics and log lines name it. */
export type TokenSource = "session" | "audience" | "fallback" | "none";

/** The user (and optionally the session) a forwarded request is for. */
export interface ForwardUser {
  userId: string;
  /** "" when the request names no session: then the user's newest session at the target's provider. */
  sessionId: string;
}

/** Why the user has no usable session, in the 401 body's terms, and the provider to start an authorization at. */
export interface NoSession {
  reason: "SESSION_NOT_FOUND" | "REAUTH_REQUIRED" | "RESOURCE_NOT_GRANTED";
  provider: string;
}

/** The errors that mean "no usable session" (the fallback key applies), as a NoSession; undefined for any other error. */
export function noSessionOf(err: unknown, target: ForwardTarget): NoSession | undefined {
  if (err instanceof SessionNotFoundError) return { reason: "SESSION_NOT_FOUND", provider: target.provider };
  if (err instanceof NoIdpSessionError) return { reason: "SESSION_NOT_FOUND", provider: err.enterpriseIdp };
  if (err instanceof ReauthRequiredError) return { reason: "REAUTH_REQUIRED", provider: err.provider };
  if (err instanceof ResourceNotGrantedError) return { reason: "RESOURCE_NOT_GRANTED", provider: target.provider };
  return undefined;
}

/**
 * The tokens a forwarded request carries, through the session domain (as
 * GetToken gets them), and the one refresh after an upstream rejected a
 * token: requests that saw the same token rejected share one forced
 * refresh, and one whose token was already replaced takes the new one
 * without refreshing again.
 */
export class ForwardTokens {
  /** Forced refreshes in flight, by session and resource, with the token whose rejection set them off. */
  private readonly refreshing = new Map<string, { rejected: string; answer: Promise<TokenAnswer> }>();

  constructor(private readonly sessions: SessionService) {}

  /** The session's token for `target`: its audience token when the target names a resource. */
  get(target: ForwardTarget, user: ForwardUser, ctx: CallContext, forceRefresh = false): Promise<TokenAnswer> {
    return this.sessions.getToken(
      { userId: user.userId, sessionId: user.sessionId, provider: target.provider, kind: "access", minValidSeconds: 0, forceRefresh, resource: target.resource ?? "" },
      ctx,
    );
  }

  /** A token to retry with after `rejected` was answered 401 invalid_token. */
  async afterRejection(target: ForwardTarget, user: ForwardUser, rejected: TokenAnswer, ctx: CallContext): Promise<TokenAnswer> {
    const key = `${rejected.sessionId}\u0000${target.resource ?? ""}`;
    const joined = this.refreshing.get(key);
    if (joined?.rejected === rejected.token) return joined.answer;
    const current = await this.get(target, user, ctx);
    if (current.token !== rejected.token) return current;
    const again = this.refreshing.get(key);
    if (again?.rejected === rejected.token) return again.answer;
    // The shared refresh does not end with the request that started it: the others wait for it too.
    const shared: CallContext = { caller: ctx.caller, providers: ctx.providers, resources: ctx.resources, trace: ctx.trace };
    const answer = this.get(target, { userId: user.userId, sessionId: rejected.sessionId }, shared, true).finally(() => {
      if (this.refreshing.get(key)?.answer === answer) this.refreshing.delete(key);
    });
    this.refreshing.set(key, { rejected: rejected.token, answer });
    return answer;
  }
}
