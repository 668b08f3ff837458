import { createLocalJWKSet, createRemoteJWKSet, errors as joseErrors, jwtVerify, type JSONWebKeySet } from "jose";
import type { UserAssertionConfig } from "../config.js";
import { UserAssertionUnavailableError, UserNotBoundError } from "../sessions/errors.js";
import type { UserBinding, UserNaming } from "../sessions/scope.js";

/** The request header (gRPC metadata) that carries a user assertion. */
export const USER_ASSERTION_HEADER = "x-user-assertion";
const CLOCK_TOLERANCE_SECONDS = 30;

/** Why an assertion failed, in the audit line's terms; never the assertion itself. */
function whyRefused(err: unknown): string {
  if (err instanceof joseErrors.JWKSTimeout || !(err instanceof joseErrors.JOSEError)) return "issuer_keys_unreachable";
  if (err instanceof joseErrors.JWTExpired) return "assertion_expired";
  if (err instanceof joseErrors.JWTClaimValidationFailed) return `assertion_${err.claim}_invalid`;
  if (err instanceof joseErrors.JWSSignatureVerificationFailed) return "assertion_bad_signature";
  if (err instanceof joseErrors.JWKSNoMatchingKey) return "assertion_unknown_key";
  return "assertion_invalid";
}

/** Verifies user assertions: JWTs signed by the configured issuer (its JWK set), for this audience, naming the user in `claim`. */
export class UserAssertionVerifier {
  private readonly keys: ReturnType<typeof createLocalJWKSet> | ReturnType<typeof createRemoteJWKSet>;

  constructor(private readonly config: UserAssertionConfig) {
    this.keys = config.jwks ? createLocalJWKSet(config.jwks as JSONWebKeySet) : createRemoteJWKSet(new URL(config.jwksUri!));
  }

  /** Resolves when `assertion` is valid now and names `userId`; rejects with UserNotBoundError otherwise (UserAssertionUnavailableError when the keys cannot be fetched). */
  async verify(assertion: string | undefined, userId: string): Promise<void> {
    if (!assertion) throw new UserNotBoundError("no_assertion");
    let claims;
    try {
      ({ payload: claims } = await jwtVerify(assertion, this.keys, {
        issuer: this.config.issuer,
        audience: this.config.audience,
        requiredClaims: ["exp", this.config.claim],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
      }));
    } catch (err) {
      const why = whyRefused(err);
      // An outage of the issuer's key set is not a refusal of this caller: UNAVAILABLE, so that it retries.
      if (why === "issuer_keys_unreachable") throw new UserAssertionUnavailableError({ cause: err instanceof joseErrors.JOSEError ? err.code : undefined });
      throw new UserNotBoundError(why, { cause: err instanceof joseErrors.JOSEError ? err.code : undefined });
    }
    if (claims[this.config.claim] !== userId) throw new UserNotBoundError("assertion_for_another_user");
  }
}

/** `user_binding: session_id`: only calls that name a session (or create one) are allowed. */
export const SESSION_ID_BINDING: UserBinding = {
  check(_userId: string, naming: UserNaming): Promise<void> {
    if (naming === "lookup" || naming === "all_sessions") return Promise.reject(new UserNotBoundError("session_id_required"));
    return Promise.resolve();
  },
};

/** `user_binding: assertion`: every call that names a user carries an assertion for that user. */
export function assertionBinding(verifier: UserAssertionVerifier, assertion: string | undefined): UserBinding {
  return { check: (userId) => verifier.verify(assertion, userId) };
}
