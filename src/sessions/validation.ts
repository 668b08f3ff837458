import { InvalidArgumentError } from "./errors.js";
import { MAX_LIFETIME_SECONDS } from "./expiry.js";
import { resourceProblem } from "../util/resource-indicator.js";

/** Largest token accepted, in UTF-8 bytes (AD FS tokens with many groups run to tens of KiB). */
export const MAX_TOKEN_BYTES = 64 * 1024;
export const MAX_USER_ID_CHARS = 256;
const MAX_SCOPE_BYTES = 8 * 1024;
const MAX_TOKEN_TYPE_CHARS = 64;

/** Session ids are 32 random bytes, base64url without padding. */
export const SESSION_ID_PATTERN = /^[A-Za-z0-9_-]{43}$/;

// eslint-disable-next-line no-control-regex
const CONTROL = /[\u0000-\u001f\u007f]/;

export function requireUserId(value: string, field = "user_id"): string {
  if (value === "") throw new InvalidArgumentError(field, "is required");
  // UTF-16 length bounds the code point count from above: only long values need counting.
  if (value.length > MAX_USER_ID_CHARS && [...value].length > MAX_USER_ID_CHARS) {
    throw new InvalidArgumentError(field, `must be at most ${MAX_USER_ID_CHARS} characters`);
  }
  if (CONTROL.test(value)) throw new InvalidArgumentError(field, "must not contain control characters");
  return value;
}

export function requireSessionId(value: string, field = "session_id"): string {
  if (value === "") throw new InvalidArgumentError(field, "is required");
  if (!SESSION_ID_PATTERN.test(value)) throw new InvalidArgumentError(field, "is not a session id issued by this service");
  return value;
}

export function checkToken(value: string, field: string, required: boolean): string | undefined {
  if (value === "") {
    if (required) throw new InvalidArgumentError(field, "is required");
    return undefined;
  }
  if (Buffer.byteLength(value, "utf8") > MAX_TOKEN_BYTES) {
    throw new InvalidArgumentError(field, `must be at most ${MAX_TOKEN_BYTES} bytes`);
  }
  return value;
}

export function checkTokenType(value: string, field = "tokens.token_type"): string {
  if (value === "") return "Bearer";
  if (value.length > MAX_TOKEN_TYPE_CHARS || !/^[\x21-\x7e]+$/.test(value)) {
    throw new InvalidArgumentError(field, `must be 1-${MAX_TOKEN_TYPE_CHARS} printable ASCII characters`);
  }
  return value;
}

export function checkScope(value: string, field = "tokens.scope"): string {
  if (Buffer.byteLength(value, "utf8") > MAX_SCOPE_BYTES) {
    throw new InvalidArgumentError(field, `must be at most ${MAX_SCOPE_BYTES} bytes`);
  }
  if (CONTROL.test(value)) throw new InvalidArgumentError(field, "must not contain control characters");
  return value;
}

export function checkExpiresIn(value: bigint, field = "tokens.expires_in"): number | undefined {
  if (value < 0n) throw new InvalidArgumentError(field, "must not be negative");
  if (value > BigInt(MAX_LIFETIME_SECONDS)) throw new InvalidArgumentError(field, "is implausibly long (over ten years)");
  return value === 0n ? undefined : Number(value);
}

/** A timestamp given by a caller: within year 1970..9999 and not absurdly far out. */
export function checkInstant(value: Date | undefined, field: string, now: Date): Date | undefined {
  if (value === undefined) return undefined;
  const t = value.getTime();
  if (!Number.isFinite(t) || t <= 0) throw new InvalidArgumentError(field, "is not a valid time");
  if (t > now.getTime() + MAX_LIFETIME_SECONDS * 1000) {
    throw new InvalidArgumentError(field, "is implausibly far in the future (over ten years)");
  }
  return value;
}

/** An RFC 8707 resource indicator, checked by `resourceProblem`. */
export function checkResource(value: string, field = "resource"): string {
  const problem = resourceProblem(value);
  if (problem) throw new InvalidArgumentError(field, problem);
  return value;
}

/** RFC 8707 resource indicators: absolute URIs without a fragment, at most 16, duplicates dropped. */
export function checkResources(values: string[], field = "resources"): string[] {
  if (values.length > 16) throw new InvalidArgumentError(field, "must list at most 16 resources");
  return [...new Set(values.map((v) => checkResource(v, field)))];
}
