import { ClientError, ResponseBodyError, WWWAuthenticateChallengeError } from "openid-client";
import { describe, expect, it } from "vitest";
import { classifyProviderError, parseRetryAfter, ProviderError, TERMINAL_OAUTH_ERRORS } from "../../src/providers/errors.js";

/** A real openid-client error for an RFC 6749 §5.2 error response. */
function bodyError(error: unknown, status: number, headers: Record<string, string> = {}): ResponseBodyError {
  const response = new Response(JSON.stringify({ error }), { status, headers });
  return new ResponseBodyError("server responded with an error in the response body", {
    cause: { error: error as string, error_description: "something went wrong" },
    response,
  });
}

/** openid-client's ClientError; its typings omit the `code` option it accepts. */
function clientError(code: string, cause?: unknown): ClientError {
  const options = { code, cause };
  return new ClientError(`client error ${code}`, options);
}

describe("classifyProviderError: OAuth error responses", () => {
  it.each([...TERMINAL_OAUTH_ERRORS])("%s is rejected for good", (code) => {
    const err = bodyError(code, 400);
    const e = classifyProviderError(err);
    expect(e).toBeInstanceOf(ProviderError);
    expect(e.kind).toBe("rejected");
    expect(e.code).toBe(code);
    expect(e.retryable).toBe(false);
    expect(e.options.status).toBe(400);
    expect(e.cause).toBe(err);
  });

  it("covers exactly the codes that mean the grant or the client is gone", () => {
    expect([...TERMINAL_OAUTH_ERRORS].sort()).toEqual(["invalid_client", "invalid_grant"]);
  });

  it("unauthorized_client keeps the session: a client configuration problem, not the user's grant", () => {
    const e = classifyProviderError(bodyError("unauthorized_client", 400));
    expect(e).toMatchObject({ kind: "unavailable", code: "unauthorized_client", retryable: false });
  });

  it("invalid_scope keeps the session: unavailable, not retried blindly", () => {
    const e = classifyProviderError(bodyError("invalid_scope", 400));
    expect(e).toMatchObject({ kind: "unavailable", code: "invalid_scope", retryable: false });
    expect(e.options.status).toBe(400);
  });

  it("a terminal code wins even on a 5xx status", () => {
    expect(classifyProviderError(bodyError("invalid_grant", 503)).kind).toBe("rejected");
  });

  it.each([500, 502, 503, 504])("HTTP %i is unavailable and retryable", (status) => {
    const e = classifyProviderError(bodyError("server_error", status));
    expect(e).toMatchObject({ kind: "unavailable", code: `http_${status}`, retryable: true });
    expect(e.options.status).toBe(status);
    expect(e.options.retryAfterMs).toBeUndefined();
  });

  it("429 is rate_limited and retryable", () => {
    const e = classifyProviderError(bodyError("slow_down", 429));
    expect(e).toMatchObject({ kind: "unavailable", code: "rate_limited", retryable: true });
    expect(e.options.status).toBe(429);
  });

  it("parses a Retry-After in seconds", () => {
    expect(classifyProviderError(bodyError("server_error", 503, { "retry-after": "120" })).options.retryAfterMs).toBe(120_000);
    expect(classifyProviderError(bodyError("x", 429, { "Retry-After": "3" })).options.retryAfterMs).toBe(3000);
  });

  it("parses a Retry-After HTTP date", () => {
    const when = new Date(Date.now() + 60_000).toUTCString();
    const ms = classifyProviderError(bodyError("server_error", 503, { "retry-after": when })).options.retryAfterMs;
    // The date has one-second resolution and time only moves forward.
    expect(ms).toBeGreaterThan(50_000);
    expect(ms).toBeLessThanOrEqual(60_000);
  });

  it("temporarily_unavailable is retryable", () => {
    const e = classifyProviderError(bodyError("temporarily_unavailable", 400));
    expect(e).toMatchObject({ kind: "unavailable", code: "temporarily_unavailable", retryable: true });
  });

  it.each(["invalid_request", "unsupported_grant_type", "server_error", "vendor_specific"])(
    "other 4xx code %s is unavailable and not retryable",
    (code) => {
      const e = classifyProviderError(bodyError(code, 400));
      expect(e).toMatchObject({ kind: "unavailable", code, retryable: false });
      expect(e.options.status).toBe(400);
    },
  );

  it.each([
    ["a space (no real code has one)", "invalid grant", "unknown_error"],
    ["a newline", "invalid_grant\nSet-Cookie: x", "unknown_error"],
    ["a double quote", 'bad"code', "unknown_error"],
    ["a backslash", "bad\\code", "unknown_error"],
    ["non-ASCII", "ungültig", "unknown_error"],
    ["65 characters", "x".repeat(65), "unknown_error"],
    ["an empty string", "", "unknown_error"],
    ["a number", 42, "unknown_error"],
    ["an object", { nested: true }, "unknown_error"],
  ])("sanitises an error code with %s", (_label, raw, expected) => {
    const e = classifyProviderError(bodyError(raw, 400));
    expect(e.code).toBe(expected);
    expect(e.kind).toBe("unavailable");
    expect(e.message).toBe(`provider unavailable: ${expected}`);
  });

  it("terminal codes match exactly (case matters)", () => {
    expect(classifyProviderError(bodyError("INVALID_GRANT", 400))).toMatchObject({ kind: "unavailable", code: "INVALID_GRANT" });
    expect(classifyProviderError(bodyError("invalid_grant_extra", 400)).kind).toBe("unavailable");
  });

  it("a WWW-Authenticate challenge is a failed client authentication", () => {
    const response = new Response(null, { status: 401, headers: { "www-authenticate": 'Basic realm="token"' } });
    const err = new WWWAuthenticateChallengeError("challenge", { cause: [], response });
    const e = classifyProviderError(err);
    expect(e).toMatchObject({ kind: "rejected", code: "invalid_client", retryable: false });
    expect(e.options.status).toBe(401);
  });

  it.each([503, 502, 429, 403])("a %i that carries a WWW-Authenticate challenge is judged by its status, not as invalid_client", (status) => {
    const response = new Response(null, { status, headers: { "www-authenticate": 'Bearer realm="gateway"' } });
    const e = classifyProviderError(new WWWAuthenticateChallengeError("challenge", { cause: [], response }));
    expect(e.kind).toBe("unavailable");
    expect(e.retryable).toBe(status !== 403);
  });
});

describe("classifyProviderError: client and transport failures", () => {
  it("OAUTH_TIMEOUT is a retryable timeout", () => {
    expect(classifyProviderError(clientError("OAUTH_TIMEOUT"))).toMatchObject({ kind: "unavailable", code: "timeout", retryable: true });
  });

  it("OAUTH_ABORT is aborted and not retryable", () => {
    expect(classifyProviderError(clientError("OAUTH_ABORT"))).toMatchObject({ code: "aborted", retryable: false });
  });

  it.each(["OAUTH_RESPONSE_IS_NOT_CONFORM", "OAUTH_RESPONSE_IS_NOT_JSON"])("%s with a 502 Response cause is http_502", (code) => {
    const response = new Response("<html>Bad Gateway</html>", { status: 502, headers: { "retry-after": "2" } });
    const e = classifyProviderError(clientError(code, response));
    expect(e).toMatchObject({ kind: "unavailable", code: "http_502", retryable: true });
    expect(e.options).toMatchObject({ status: 502, retryAfterMs: 2000 });
  });

  it("a non-conforming 200 response is a bad_response, not retryable", () => {
    const e = classifyProviderError(clientError("OAUTH_RESPONSE_IS_NOT_CONFORM", new Response("{}", { status: 200 })));
    expect(e).toMatchObject({ code: "bad_response", retryable: false });
    expect(e.options.status).toBe(200);
  });

  it("a non-conforming response without a Response cause is a bad_response", () => {
    expect(classifyProviderError(clientError("OAUTH_RESPONSE_IS_NOT_JSON", new Error("x")))).toMatchObject({ code: "bad_response", retryable: false });
  });

  it("any other ClientError code is a bad_response", () => {
    expect(classifyProviderError(clientError("OAUTH_INVALID_RESPONSE"))).toMatchObject({ code: "bad_response", retryable: false });
  });

  it("TypeError('fetch failed') is a retryable network error", () => {
    const err = new TypeError("fetch failed", { cause: Object.assign(new Error("connect ECONNREFUSED"), { code: "ECONNREFUSED" }) });
    const e = classifyProviderError(err);
    expect(e).toMatchObject({ kind: "unavailable", code: "network", retryable: true });
    expect(e.cause).toBe(err);
  });

  it("a coded TypeError (a programming error) is not retried", () => {
    const err = Object.assign(new TypeError("bad argument"), { code: "ERR_INVALID_ARG_TYPE" });
    expect(classifyProviderError(err)).toMatchObject({ code: "client_error", retryable: false });
  });

  it("a TimeoutError from AbortSignal.timeout is a retryable timeout; an AbortError is not", () => {
    expect(classifyProviderError(new DOMException("timed out", "TimeoutError"))).toMatchObject({ code: "timeout", retryable: true });
    expect(classifyProviderError(new DOMException("aborted", "AbortError"))).toMatchObject({ code: "aborted", retryable: false });
  });

  it("a ProviderError passes through unchanged", () => {
    const err = new ProviderError("unavailable", "deadline");
    expect(classifyProviderError(err)).toBe(err);
  });

  it.each([["a plain Error", new Error("boom")], ["a string", "boom"], ["undefined", undefined]])(
    "%s is an unretryable client_error whose message holds nothing upstream",
    (_label, err) => {
      const e = classifyProviderError(err);
      expect(e).toMatchObject({ kind: "unavailable", code: "client_error", retryable: false });
      expect(e.message).toBe("provider unavailable: client_error");
    },
  );

  it("never copies upstream text into its message", () => {
    const err = bodyError("invalid_grant", 400);
    err.message = "refresh token rt-SECRET-123 is revoked";
    expect(classifyProviderError(err).message).not.toContain("rt-SECRET-123");
  });
});

describe("parseRetryAfter", () => {
  const now = Date.parse("2026-01-15T12:00:00Z");

  it.each([
    ["0", 0],
    ["5", 5000],
    [" 120 ", 120_000],
    ["86400", 86_400_000],
  ])("reads delta-seconds %j", (value, ms) => {
    expect(parseRetryAfter(value, now)).toBe(ms);
  });

  it("reads an HTTP date relative to now", () => {
    expect(parseRetryAfter("Thu, 15 Jan 2026 12:00:30 GMT", now)).toBe(30_000);
  });

  it("clamps a past HTTP date to zero", () => {
    expect(parseRetryAfter("Thu, 15 Jan 2026 11:00:00 GMT", now)).toBe(0);
  });

  it.each([null, undefined, "", "soon", "   "])("returns undefined for %j", (value) => {
    expect(parseRetryAfter(value, now)).toBeUndefined();
  });
});
