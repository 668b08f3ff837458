/**
 * Errors of the session domain. Each has a stable machine `code`; the message
 * is safe to show a caller (it never holds a token, a secret or a session id)
 * and the `cause` keeps the underlying error for the log.
 */
export abstract class SessionError extends Error {
  abstract readonly code: string;
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
  }
}

/** Bad input; `field` names the request field. */
export class InvalidArgumentError extends SessionError {
  override name = "InvalidArgumentError";
  readonly code = "INVALID_ARGUMENT";
  constructor(
    readonly field: string,
    reason: string,
  ) {
    super(`${field}: ${reason}`);
  }
}

/** No such session for this user; deliberately the same for "unknown" and "someone else's". */
export class SessionNotFoundError extends SessionError {
  override name = "SessionNotFoundError";
  readonly code = "NOT_FOUND";
  constructor() {
    super("session not found");
  }
}

/** The provider rejected the refresh (or there is no refresh token): the user must log in again. */
export class ReauthRequiredError extends SessionError {
  override name = "ReauthRequiredError";
  readonly code = "REAUTH_REQUIRED";
  constructor(
    /** The provider's error code, or our reason (no_refresh_token). */
    readonly reason: string,
    readonly provider: string,
    options?: { cause?: unknown },
  ) {
    super("the session needs a new login", options);
  }
}

/** The provider could not be reached or failed, and no valid token is left to return. */
export class ProviderUnavailableError extends SessionError {
  override name = "ProviderUnavailableError";
  readonly code = "PROVIDER_UNAVAILABLE";
  constructor(
    readonly reason: string,
    readonly provider: string,
    options?: { cause?: unknown },
  ) {
    super(`provider ${provider} is unavailable (${reason}); the session is kept, try again`, options);
  }
}

/** A refresh by another replica did not finish within the wait bound. */
export class RefreshTimeoutError extends SessionError {
  override name = "RefreshTimeoutError";
  readonly code = "REFRESH_TIMEOUT";
  constructor() {
    super("timed out waiting for the session's refresh; the session is kept, try again");
  }
}

/** The session's ciphertext was written with a key this replica does not have. */
export class KeyUnavailableError extends SessionError {
  override name = "KeyUnavailableError";
  readonly code = "KEY_UNAVAILABLE";
  constructor(
    readonly keyId: string,
    options?: { cause?: unknown },
  ) {
    super(`the session is encrypted with key "${keyId}", which is not configured`, options);
  }
}

/** The session's ciphertext failed authentication (tampered or moved between rows). */
export class CorruptSessionError extends SessionError {
  override name = "CorruptSessionError";
  readonly code = "CORRUPT_SESSION";
  constructor(options?: { cause?: unknown }) {
    super("the session's stored tokens failed integrity checks", options);
  }
}

/** The session has no id_token to return. */
export class NoIdTokenError extends SessionError {
  override name = "NoIdTokenError";
  readonly code = "NO_ID_TOKEN";
  constructor() {
    super("the session has no valid id_token");
  }
}

/** A caller's deadline passed while its token was being refreshed. */
export class CallerDeadlineError extends SessionError {
  override name = "CallerDeadlineError";
  readonly code = "DEADLINE_EXCEEDED";
  constructor() {
    super("deadline exceeded while the token was being refreshed; the refresh goes on");
  }
}

/** A known caller asked for a provider outside its `providers`. */
export class PermissionDeniedError extends SessionError {
  override name = "PermissionDeniedError";
  readonly code = "PERMISSION_DENIED";
  readonly reason = "provider_not_allowed";
  constructor(readonly provider: string) {
    super(`this caller may not act on provider ${provider}`);
  }
}

/** The caller is bound to users (user_binding) and this call is not bound to its user_id; `why` says which check failed. */
export class UserNotBoundError extends SessionError {
  override name = "UserNotBoundError";
  readonly code = "USER_NOT_BOUND";
  readonly reason = "user_not_bound";
  constructor(
    readonly why: string,
    options?: { cause?: unknown },
  ) {
    super(`this caller may act only for the user it is bound to (${why})`, options);
  }
}

/** The user assertion issuer's keys could not be fetched, so no assertion can be checked now: not the caller's fault, try again. */
export class UserAssertionUnavailableError extends SessionError {
  override name = "UserAssertionUnavailableError";
  readonly code = "USER_ASSERTION_UNAVAILABLE";
  constructor(options?: { cause?: unknown }) {
    super("the user assertion issuer's keys cannot be fetched right now; try again", options);
  }
}

/** The session store (the database) could not be reached or did not answer in time; nothing was changed by this call. */
export class StoreUnavailableError extends SessionError {
  override name = "StoreUnavailableError";
  readonly code = "DATABASE_UNAVAILABLE";
  constructor(options?: { cause?: unknown }) {
    super("database unavailable; try again", options);
  }
}

/** GetToken asked for an audience the session was not granted (refresh mode), or the provider refused it as a target. */
export class ResourceNotGrantedError extends SessionError {
  override name = "ResourceNotGrantedError";
  readonly code = "RESOURCE_NOT_GRANTED";
  constructor(readonly resource: string) {
    super(`the session was not granted resource ${resource}`);
  }
}

/** A known caller asked for an audience outside its `resources`. */
export class ResourceNotAllowedError extends SessionError {
  override name = "ResourceNotAllowedError";
  readonly code = "PERMISSION_DENIED";
  readonly reason = "resource_not_allowed";
  constructor(readonly resource: string) {
    super(`this caller may not ask for tokens for ${resource}`);
  }
}

/** The provider refused a token exchange for another reason than the target (RFC 8693). */
export class ExchangeRefusedError extends SessionError {
  override name = "ExchangeRefusedError";
  readonly code = "EXCHANGE_REFUSED";
  constructor(
    readonly providerError: string,
    readonly provider: string,
    options?: { cause?: unknown },
  ) {
    super(`provider ${provider} refused the token exchange (${providerError})`, options);
  }
}
