import { create } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate, type Timestamp } from "@bufbuild/protobuf/wkt";
import {
  AudienceTokenInfoSchema,
  CompleteAuthorizationResponseSchema,
  GetTokenResponseSchema,
  type GetTokenRequest,
  type GetTokenResponse,
  ListSessionsResponseSchema,
  RevokeSessionResponseSchema,
  RevokeUserSessionsResponseSchema,
  SessionInfoSchema,
  SessionStatus,
  StartAuthorizationResponseSchema,
  StoreSessionResponseSchema,
  TokenKind,
  type TokenService,
} from "../../gen/tokenservice/v1/token_service_pb.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import type { GetTokenInput, SessionService, TokenAnswer } from "../sessions/session-service.js";
import type { SessionHealth, UserSessions } from "../sessions/user-sessions.js";
import type { CodeFlow } from "../authorization/code-flow.js";
import type { ServiceHandlers } from "./handlers.js";

function toDate(ts: Timestamp | undefined, field: string): Date | undefined {
  if (!ts || (ts.seconds === 0n && ts.nanos === 0)) return undefined;
  if (ts.nanos < 0 || ts.nanos > 999_999_999) throw new InvalidArgumentError(field, "has invalid nanos");
  const d = timestampDate(ts);
  if (Number.isNaN(d.getTime())) throw new InvalidArgumentError(field, "is not a valid time");
  return d;
}

function kindOf(kind: TokenKind): "access" | "id" {
  switch (kind) {
    case TokenKind.UNSPECIFIED:
    case TokenKind.ACCESS:
      return "access";
    case TokenKind.ID:
      return "id";
    default:
      throw new InvalidArgumentError("kind", "is not a known TokenKind");
  }
}

/** GetToken's request in the domain's terms. */
function tokenInput(req: GetTokenRequest): GetTokenInput {
  return {
    userId: req.userId,
    sessionId: req.sessionId,
    provider: req.provider,
    kind: kindOf(req.kind),
    minValidSeconds: req.minValidSeconds,
    forceRefresh: req.forceRefresh,
    resource: req.resource,
  };
}

/** ListSessions' status of each domain status. */
const STATUS: Record<SessionHealth, SessionStatus> = {
  active: SessionStatus.ACTIVE,
  refresh_failing: SessionStatus.REFRESH_FAILING,
  reauth_required: SessionStatus.REAUTH_REQUIRED,
  revoked: SessionStatus.REVOKED,
  logged_out: SessionStatus.LOGGED_OUT,
};

/**
 * The TokenService RPCs, once for both listeners: proto in, domain call,
 * proto out. No logic lives here but the caller's user binding, checked
 * first by every RPC that names a user (how it names the user decides what a
 * `session_id`-bound caller may do); typed against the full generated service
 * so a missing RPC fails to compile. `ctx` comes from the RPC chain.
 */
export function createTokenServiceHandlers(
  sessions: SessionService,
  users: UserSessions,
  codeFlow: CodeFlow,
): ServiceHandlers<typeof TokenService> {
  /** GetToken's response to each reused (frozen) answer. */
  const responses = new WeakMap<object, GetTokenResponse>();
  const responseOf = (answer: TokenAnswer): GetTokenResponse => {
    // A frozen answer is the one built once per cached session version: so is its response, which is
    // frozen too, and the gRPC listener then encodes it once (see grpc-service.ts).
    const reused = Object.isFrozen(answer) ? responses.get(answer) : undefined;
    if (reused) return reused;
    const response = create(GetTokenResponseSchema, {
      token: answer.token,
      tokenType: answer.tokenType,
      expiresAt: timestampFromDate(answer.expiresAt),
      scope: answer.scope,
      sessionId: answer.sessionId,
    });
    if (Object.isFrozen(answer)) responses.set(answer, Object.freeze(response));
    return response;
  };
  return {
    async storeSession(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, "new");
      const t = req.tokens;
      const result = await sessions.storeSession(
        {
          userId: req.userId,
          provider: req.provider,
          tokens: {
            accessToken: t?.accessToken ?? "",
            refreshToken: t?.refreshToken ?? "",
            idToken: t?.idToken ?? "",
            tokenType: t?.tokenType ?? "",
            expiresIn: t?.expiresIn ?? 0n,
            expiresAt: toDate(t?.expiresAt, "tokens.expires_at"),
            scope: t?.scope ?? "",
            refreshExpiresAt: toDate(t?.refreshExpiresAt, "tokens.refresh_expires_at"),
          },
          resources: req.resources,
        },
        ctx,
      );
      return create(StoreSessionResponseSchema, {
        sessionId: result.sessionId,
        expiresAt: timestampFromDate(result.expiresAt),
      });
    },

    getToken(req, ctx) {
      // A cheap branch for callers without user binding: GetToken is the hot path, and a cached token is
      // answered as a plain value, without a promise (see RpcChain.serve).
      if (ctx.userBinding) {
        return ctx.userBinding
          .check(req.userId, req.sessionId !== "" ? "session" : "lookup")
          .then(() => sessions.tokenNow(tokenInput(req), ctx))
          .then(responseOf);
      }
      const answer = sessions.tokenNow(tokenInput(req), ctx);
      return answer instanceof Promise ? answer.then(responseOf) : responseOf(answer);
    },

    async revokeSession(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, "session");
      await users.revokeSession({ userId: req.userId, sessionId: req.sessionId }, ctx);
      return create(RevokeSessionResponseSchema, {});
    },

    async listSessions(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, "all_sessions");
      const list = await users.listSessions({ userId: req.userId, provider: req.provider, includeEnded: req.includeEnded }, ctx);
      return create(ListSessionsResponseSchema, {
        sessions: list.map((s) =>
          create(SessionInfoSchema, {
            sessionId: s.sessionId,
            provider: s.provider,
            createdAt: timestampFromDate(s.createdAt),
            lastUsedAt: timestampFromDate(s.lastUsedAt),
            accessExpiresAt: s.accessExpiresAt ? timestampFromDate(s.accessExpiresAt) : undefined,
            status: STATUS[s.status],
            refreshFailures: s.refreshFailures,
            failingSince: s.failingSince ? timestampFromDate(s.failingSince) : undefined,
            lastError: s.lastError ?? "",
            lastErrorAt: s.lastErrorAt ? timestampFromDate(s.lastErrorAt) : undefined,
            reauthAt: s.reauthAt ? timestampFromDate(s.reauthAt) : undefined,
            endedAt: s.endedAt ? timestampFromDate(s.endedAt) : undefined,
            endReason: s.endReason ?? "",
            keyId: s.keyId,
            refreshable: s.refreshable,
            reauthReason: s.reauthReason ?? "",
            resources: s.resources,
            audienceTokens: s.audienceTokens.map((a) =>
              create(AudienceTokenInfoSchema, { resource: a.resource, expiresAt: timestampFromDate(a.expiresAt) }),
            ),
          }),
        ),
      });
    },

    async revokeUserSessions(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, "all_sessions");
      const revoked = await users.revokeUserSessions({ userId: req.userId, provider: req.provider }, ctx);
      return create(RevokeUserSessionsResponseSchema, { revoked });
    },

    async startAuthorization(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, req.sessionId !== "" ? "session" : "new");
      const started = await codeFlow.start(
        {
          userId: req.userId,
          provider: req.provider,
          redirectUri: req.redirectUri,
          scopes: req.scopes,
          resources: req.resources,
          extraParams: req.extraParams,
          challenge: req.challenge,
          sessionId: req.sessionId,
        },
        ctx,
      );
      return create(StartAuthorizationResponseSchema, {
        authorizationUrl: started.authorizationUrl,
        state: started.state,
        expiresAt: timestampFromDate(started.expiresAt),
        scopes: started.scopes,
      });
    },

    async completeAuthorization(req, ctx) {
      if (ctx.userBinding) await ctx.userBinding.check(req.userId, "new");
      const done = await codeFlow.complete({ userId: req.userId, callbackUrl: req.callbackUrl }, ctx);
      return create(CompleteAuthorizationResponseSchema, {
        sessionId: done.sessionId,
        expiresAt: timestampFromDate(done.expiresAt),
        provider: done.provider,
        steppedUp: done.steppedUp,
      });
    },
  };
}
