import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { SessionStatus, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import type { GatewayError } from "./openai-error.js";

/** Where the gateway gets users' tokens from. */
export interface TokenSourceOptions {
  /** Base URL of the token service, e.g. http://127.0.0.1:50051. */
  tokenServiceUrl: string;
  /** Provider id as configured in the token service, e.g. "corp". */
  provider: string;
  /** Sent as `authorization: Bearer …` on every call to the token service. */
  tokenServiceCredential?: string;
  /** Where a user signs in again; part of the 401 answers. */
  loginUrl?: string;
  /** Deadline of one GetToken call; default 5000 ms. */
  timeoutMs?: number;
}

/** What one lookup gave: a token, or the answer to send the client instead. */
export type TokenResult =
  | { ok: true; token: string; /** The session it came from: what a step-up names. */ sessionId: string }
  | { ok: false; error: GatewayError; /** For the log: gRPC code name and ErrorInfo reason. */ cause: string };

/** The start or the end of connecting a user's account: a URL to send the browser to, or the outcome. */
export type ConnectResult =
  | { ok: true; url: string }
  | { ok: true; connected: { provider: string; expiresAt: Date | undefined; steppedUp: boolean } }
  | { ok: false; status: number; reason: string };

export interface TokenSource {
  /**
   * A token valid right now for the user at the configured provider; with
   * `resource`, one whose audience is that resource (RFC 8707) and nothing else.
   */
  tokenFor(userId: string, signal?: AbortSignal, resource?: string): Promise<TokenResult>;
  /** StartAuthorization: where to send the user's browser to connect their account at the provider (asking for `resources`). */
  startConnect(userId: string, redirectUri: string, resources?: string[]): Promise<ConnectResult>;
  /**
   * StartAuthorization for a step-up of the user's session `sessionId`, with
   * the `WWW-Authenticate` value a tool server refused a call with: where to
   * send the browser so that the session gets the scopes the server asked for.
   */
  startStepUp(userId: string, redirectUri: string, sessionId: string, challenge: string): Promise<ConnectResult>;
  /** The id of the user's newest active session at the provider (ListSessions: no token leaves the service), for a step-up. */
  newestSession(userId: string): Promise<string | undefined>;
  /** CompleteAuthorization with the whole URL the browser came back to. */
  finishConnect(userId: string, callbackUrl: string): Promise<ConnectResult>;
  close(): void;
}

/** A failed connect call as an HTTP status and the ErrorInfo reason (INVALID_STATE, AUTHORIZATION_DENIED, …). */
function connectFailure(err: unknown): ConnectResult {
  const e = ConnectError.from(err);
  const reason = e.findDetails(ErrorInfoSchema)[0]?.reason ?? Code[e.code] ?? "UNKNOWN";
  const status = e.code === Code.FailedPrecondition || e.code === Code.InvalidArgument ? 400 : e.code === Code.Unavailable ? 503 : 502;
  return { ok: false, status, reason };
}

/** A TokenService client over gRPC (HTTP/2) that maps its errors to HTTP answers. */
export function createTokenSource(options: TokenSourceOptions): TokenSource {
  const sessionManager = new Http2SessionManager(options.tokenServiceUrl);
  const credential = options.tokenServiceCredential;
  const interceptors: Interceptor[] = credential
    ? [
        (next) => (req) => {
          req.header.set("authorization", `Bearer ${credential}`);
          return next(req);
        },
      ]
    : [];
  const client = createClient(
    TokenService,
    createGrpcTransport({ baseUrl: options.tokenServiceUrl, sessionManager, interceptors }),
  );
  const timeoutMs = options.timeoutMs ?? 5000;

  return {
    async tokenFor(userId, signal, resource) {
      try {
        const res = await client.getToken({ userId, provider: options.provider, resource }, { timeoutMs, signal });
        return { ok: true, token: res.token, sessionId: res.sessionId };
      } catch (err) {
        return mapTokenError(err, options);
      }
    },
    async startConnect(userId, redirectUri, resources = []) {
      try {
        const res = await client.startAuthorization({ userId, provider: options.provider, redirectUri, resources }, { timeoutMs });
        return { ok: true, url: res.authorizationUrl };
      } catch (err) {
        return connectFailure(err);
      }
    },
    async startStepUp(userId, redirectUri, sessionId, challenge) {
      try {
        const res = await client.startAuthorization({ userId, provider: options.provider, redirectUri, sessionId, challenge }, { timeoutMs });
        return { ok: true, url: res.authorizationUrl };
      } catch (err) {
        return connectFailure(err);
      }
    },
    async newestSession(userId) {
      try {
        const { sessions } = await client.listSessions({ userId, provider: options.provider }, { timeoutMs });
        const active = sessions.filter((x) => x.status === SessionStatus.ACTIVE);
        active.sort((a, b) => Number((b.createdAt?.seconds ?? 0n) - (a.createdAt?.seconds ?? 0n)));
        return active[0]?.sessionId;
      } catch {
        return undefined;
      }
    },
    async finishConnect(userId, callbackUrl) {
      try {
        const res = await client.completeAuthorization({ userId, callbackUrl }, { timeoutMs });
        const seconds = res.expiresAt ? Number(res.expiresAt.seconds) : undefined;
        return { ok: true, connected: { provider: res.provider, expiresAt: seconds ? new Date(seconds * 1000) : undefined, steppedUp: res.steppedUp } };
      } catch (err) {
        return connectFailure(err);
      }
    },
    close() {
      sessionManager.abort();
    },
  };
}

const TOKEN_SERVICE_ERROR: GatewayError = {
  status: 502,
  type: "server_error",
  code: "token_service_error",
  message: "The token service could not provide a token.",
};

/**
 * The answer for a user without a usable session, by the token service's
 * reason (GetToken's ErrorInfo, or the forwarding proxy's 401 body).
 */
export function noSessionError(reason: "REAUTH_REQUIRED" | "RESOURCE_NOT_GRANTED" | "SESSION_NOT_FOUND", options: Pick<TokenSourceOptions, "loginUrl" | "provider">): GatewayError {
  const login = options.loginUrl;
  const where = login ? { loginUrl: login } : {};
  switch (reason) {
    case "REAUTH_REQUIRED":
      return { status: 401, type: "reauth_required", code: "reauth_required", message: `Your sign-in at ${options.provider} has expired or was revoked; log in again${login ? ` at ${login}` : ""}.`, ...where };
    case "RESOURCE_NOT_GRANTED":
      return {
        status: 403,
        type: "permission_error",
        code: "tool_server_not_connected",
        message: `Your sign-in at ${options.provider} does not cover this tool server; connect it${login ? ` at ${login}` : ""}.`,
        ...where,
      };
    case "SESSION_NOT_FOUND":
      return { status: 401, type: "authentication_error", code: "no_session", message: `No session at ${options.provider}, log in${login ? ` at ${login}` : ""}.`, ...where };
  }
}

/** Turns a failed GetToken into the answer for the client. Never copies the error message. */
export function mapTokenError(err: unknown, options: Pick<TokenSourceOptions, "loginUrl" | "provider">): TokenResult {
  // Not ConnectError.from(err): nothing of an unknown error (its message could hold anything) is used.
  if (!(err instanceof ConnectError)) return { ok: false, error: TOKEN_SERVICE_ERROR, cause: "unknown" };
  const ce = err;
  const reason = ce.findDetails(ErrorInfoSchema)[0]?.reason ?? "";
  const cause = `${Code[ce.code]}${reason ? `/${reason}` : ""}`;
  const fail = (error: GatewayError): TokenResult => ({ ok: false, error, cause });

  if (ce.code === Code.FailedPrecondition && (reason === "REAUTH_REQUIRED" || reason === "RESOURCE_NOT_GRANTED")) return fail(noSessionError(reason, options));
  switch (ce.code) {
    case Code.NotFound:
      return fail(noSessionError("SESSION_NOT_FOUND", options));
    case Code.Unavailable:
    case Code.DeadlineExceeded:
    case Code.Canceled:
      return fail({
        status: 503,
        type: "service_unavailable",
        code: "token_service_unavailable",
        message: "The token service is unavailable; retry shortly.",
        retryAfter: 1,
      });
    case Code.ResourceExhausted:
      return fail({
        status: 429,
        type: "rate_limit_error",
        code: "token_service_rate_limited",
        message: "Too many token requests; retry shortly.",
        retryAfter: 1,
      });
    case Code.InvalidArgument:
      return fail({ status: 400, type: "invalid_request_error", code: "invalid_user", message: "The user id was rejected." });
    default:
      // UNAUTHENTICATED / PERMISSION_DENIED (the gateway's own credential), KEY_UNAVAILABLE, INTERNAL …:
      // not the user's fault and nothing they can fix by logging in.
      return fail(TOKEN_SERVICE_ERROR);
  }
}
