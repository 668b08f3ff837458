/**
 * Expiry arithmetic: when a token expires, how long before that we refresh,
 * and whether a token is good enough for a caller. Pure functions of time.
 */

/** Claims of a JWT's payload, read without verification (we only need times). */
export function jwtClaims(token: string): Record<string, unknown> | undefined {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) return undefined;
  try {
    const payload: unknown = JSON.parse(Buffer.from(parts[1], "base64url").toString("utf8"));
    return payload && typeof payload === "object" && !Array.isArray(payload)
      ? (payload as Record<string, unknown>)
      : undefined;
  } catch {
    return undefined;
  }
}

function epochClaim(claims: Record<string, unknown> | undefined, name: string): Date | undefined {
  const v = claims?.[name];
  return typeof v === "number" && Number.isFinite(v) && v > 0 && v < 1e11 ? new Date(v * 1000) : undefined;
}

/** Longest lifetime believed from an expires_in: ten years. */
export const MAX_LIFETIME_SECONDS = 10 * 365 * 24 * 3600;

/** How the expiry of an access token was worked out. */
export type ExpirySource = "expires_at" | "expires_in" | "jwt_exp" | "default";

export interface AccessExpiry {
  expiresAt: Date;
  /** Start of the token's life, for the margin rule: the JWT iat when plausible, else now. */
  issuedAt: Date;
  source: ExpirySource;
}

/**
 * The access token's expiry, from the first of: an explicit expiry time,
 * expires_in counted from now, the JWT `exp` claim, the provider's default.
 */
export function accessTokenExpiry(input: {
  accessToken: string;
  expiresAt?: Date | undefined;
  expiresInSeconds?: number | undefined;
  now: Date;
  defaultLifetimeSeconds: number;
}): AccessExpiry {
  const { now } = input;
  const claims = jwtClaims(input.accessToken);
  const iat = epochClaim(claims, "iat");
  const plausibleIat = (exp: Date) => (iat && iat <= now && iat < exp ? iat : now);
  if (input.expiresAt && Number.isFinite(input.expiresAt.getTime())) return { expiresAt: input.expiresAt, issuedAt: plausibleIat(input.expiresAt), source: "expires_at" };
  if (input.expiresInSeconds !== undefined && input.expiresInSeconds > 0) {
    // Providers have sent absurd values; ten years is already more than any token lives.
    const seconds = Math.min(input.expiresInSeconds, MAX_LIFETIME_SECONDS);
    return { expiresAt: new Date(now.getTime() + seconds * 1000), issuedAt: now, source: "expires_in" };
  }
  const exp = epochClaim(claims, "exp");
  if (exp) return { expiresAt: exp, issuedAt: plausibleIat(exp), source: "jwt_exp" };
  return {
    expiresAt: new Date(now.getTime() + input.defaultLifetimeSeconds * 1000),
    issuedAt: now,
    source: "default",
  };
}

/** The `exp` of an id_token, if it is a JWT with one. */
export function idTokenExpiry(idToken: string): Date | undefined {
  return epochClaim(jwtClaims(idToken), "exp");
}

/** Who an id_token is about: its `sub` and `sid` claims (for back-channel logout), when they are strings. */
export function idTokenIdentity(idToken: string): { subject: string | null; sid: string | null } {
  const claims = jwtClaims(idToken);
  const str = (v: unknown) => (typeof v === "string" && v !== "" && v.length <= 255 ? v : null);
  return { subject: str(claims?.sub), sid: str(claims?.sid) };
}

/**
 * The refresh margin for a token: the configured margin, but never more than
 * half the token's lifetime, so a 5-minute token with a 5-minute margin is not
 * refreshed on every call.
 */
export function refreshMarginSeconds(configuredSeconds: number, lifetimeSeconds: number): number {
  return Math.max(0, Math.min(configuredSeconds, Math.floor(lifetimeSeconds / 2)));
}

/**
 * How long the returned token must stay valid. The caller's min_valid_seconds
 * when given, else the margin. A request no token of this lifetime can meet
 * (at least the whole lifetime) is capped at half the lifetime instead of
 * forcing a refresh on every call.
 */
export function requiredValiditySeconds(input: {
  minValidSeconds: number;
  configuredMarginSeconds: number;
  lifetimeSeconds: number;
}): number {
  const { minValidSeconds, lifetimeSeconds } = input;
  if (minValidSeconds <= 0) return refreshMarginSeconds(input.configuredMarginSeconds, lifetimeSeconds);
  if (lifetimeSeconds > 0 && minValidSeconds >= lifetimeSeconds) return Math.floor(lifetimeSeconds / 2);
  return minValidSeconds;
}

/** Seconds of validity left at `now` (negative once expired). */
export function secondsLeft(expiresAt: Date, now: Date): number {
  return (expiresAt.getTime() - now.getTime()) / 1000;
}

/** Lifetime in seconds between issue and expiry (0 when unknown or inverted). */
export function lifetimeSeconds(issuedAt: Date, expiresAt: Date): number {
  return Math.max(0, Math.floor((expiresAt.getTime() - issuedAt.getTime()) / 1000));
}
