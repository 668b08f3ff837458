import { ClientError, ResponseBodyError, WWWAuthenticateChallengeError } from "openid-client";

/**
 * RFC 6749 §5.2 error codes that mean the grant (or this client) is gone:
 * retrying with the same refresh token cannot succeed, and the user has to
 * log in again. `invalid_client` counts because the client cannot register
 * again yet (where it can, that comes first). `invalid_scope` and
 * `unauthorized_client` do not: they speak of what was asked and of this
 * client's configuration, not of the user's grant, so the session is kept.
 */
export const TERMINAL_OAUTH_ERRORS = new Set(["invalid_grant", "invalid_client"]);

/**
 * A failed provider call, classified by HTTP status and RFC 6749 error code,
 * never by message text. `code` is safe to log and to show: an OAuth error
 * code or one of our own reasons (timeout, network, http_503, …).
 */
export class ProviderError extends Error {
  override name = "ProviderError";
  constructor(
    /** rejected: the provider refused the grant for good; unavailable: try again later. */
    readonly kind: "rejected" | "unavailable",
    readonly code: string,
    readonly options: {
      status?: number;
      /** Worth another attempt within the same refresh. */
      retryable?: boolean;
      /** Milliseconds the provider asked us to wait (Retry-After). */
      retryAfterMs?: number;
      cause?: unknown;
    } = {},
  ) {
    super(`provider ${kind}: ${code}`, { cause: options.cause });
  }

  get retryable(): boolean {
    return this.options.retryable === true;
  }
}

/** Parses Retry-After (delta-seconds or an HTTP date) into milliseconds. */
export function parseRetryAfter(value: string | null | undefined, now = Date.now()): number | undefined {
  if (!value) return undefined;
  const trimmed = value.trim();
  if (/^\d+$/.test(trimmed)) return Number(trimmed) * 1000;
  // An HTTP-date names a weekday or month; anything else ("-5", "1.5") is ignored.
  if (!/[A-Za-z]{3}/.test(trimmed)) return undefined;
  const at = Date.parse(trimmed);
  return Number.isNaN(at) ? undefined : Math.max(0, at - now);
}

/** RFC 6749 error codes are %x20-21 / %x23-5B / %x5D-7E; we also refuse spaces, which no real code has. */
const SAFE_CODE = /^[\x21\x23-\x5B\x5D-\x7E]{1,64}$/;

/** An OAuth error code as received, if it is a well-formed one (RFC 6749 §5.2 charset). */
function safeOAuthCode(code: unknown): string {
  return typeof code === "string" && SAFE_CODE.test(code) ? code : "unknown_error";
}

function fromStatus(status: number, headers: Headers | undefined, cause: unknown, fallback: string): ProviderError {
  if (status === 429 || status >= 500) {
    return new ProviderError("unavailable", status === 429 ? "rate_limited" : `http_${status}`, {
      status,
      retryable: true,
      retryAfterMs: parseRetryAfter(headers?.get("retry-after")),
      cause,
    });
  }
  return new ProviderError("unavailable", fallback, { status, cause });
}

/** Maps anything openid-client or fetch threw to a ProviderError. */
export function classifyProviderError(err: unknown): ProviderError {
  if (err instanceof ProviderError) return err;
  if (err instanceof ResponseBodyError) {
    const code = safeOAuthCode(err.error);
    if (TERMINAL_OAUTH_ERRORS.has(code)) {
      return new ProviderError("rejected", code, { status: err.status, cause: err });
    }
    if (err.status === 429 || err.status >= 500) return fromStatus(err.status, err.response.headers, err, code);
    // temporarily_unavailable, invalid_request, …: keep the session, do not retry blindly.
    return new ProviderError("unavailable", code, { status: err.status, retryable: code === "temporarily_unavailable", cause: err });
  }
  if (err instanceof WWWAuthenticateChallengeError) {
    // RFC 6749 §5.2: a 401 with a challenge from the token endpoint is a failed client authentication.
    // Any other status that happens to carry WWW-Authenticate (a gateway's 503) is judged by its status.
    if (err.status === 401) return new ProviderError("rejected", "invalid_client", { status: err.status, cause: err });
    return fromStatus(err.status, err.response.headers, err, `http_${err.status}`);
  }
  if (err instanceof ClientError) {
    switch (err.code) {
      case "OAUTH_TIMEOUT":
        return new ProviderError("unavailable", "timeout", { retryable: true, cause: err });
      case "OAUTH_ABORT":
        return new ProviderError("unavailable", "aborted", { cause: err });
      case "OAUTH_RESPONSE_IS_NOT_CONFORM":
      case "OAUTH_RESPONSE_IS_NOT_JSON": {
        const response = err.cause instanceof Response ? err.cause : undefined;
        if (response) return fromStatus(response.status, response.headers, err, "bad_response");
        return new ProviderError("unavailable", "bad_response", { cause: err });
      }
      default:
        return new ProviderError("unavailable", "bad_response", { cause: err });
    }
  }
  if (err instanceof Error && (err.name === "TimeoutError" || err.name === "AbortError")) {
    return new ProviderError("unavailable", err.name === "TimeoutError" ? "timeout" : "aborted", {
      retryable: err.name === "TimeoutError",
      cause: err,
    });
  }
  if (err instanceof TypeError && !(err as { code?: unknown }).code) {
    // fetch() failed before a response: refused, reset, DNS, TLS.
    return new ProviderError("unavailable", "network", { retryable: true, cause: err });
  }
  return new ProviderError("unavailable", "client_error", { cause: err });
}
