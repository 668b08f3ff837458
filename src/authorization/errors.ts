import { SessionError } from "../sessions/errors.js";

/** A provider id already in use (in the YAML file or at run time). */
export class ProviderExistsError extends SessionError {
  override name = "ProviderExistsError";
  readonly code = "PROVIDER_EXISTS";
  constructor(readonly provider: string) {
    super(`provider ${provider} already exists`);
  }
}

/** No provider with this id. */
export class ProviderNotFoundError extends SessionError {
  override name = "ProviderNotFoundError";
  readonly code = "PROVIDER_NOT_FOUND";
  constructor(readonly provider: string) {
    super(`provider ${provider} does not exist`);
  }
}

/** A provider of the YAML file cannot be changed at run time. */
export class ProviderReadOnlyError extends SessionError {
  override name = "ProviderReadOnlyError";
  readonly code = "PROVIDER_READ_ONLY";
  constructor(readonly provider: string) {
    super(`provider ${provider} comes from the configuration file; change it there`);
  }
}

/** Deleting a provider that has sessions needs revoke_sessions. */
export class ProviderHasSessionsError extends SessionError {
  override name = "ProviderHasSessionsError";
  readonly code = "PROVIDER_HAS_SESSIONS";
  constructor(
    readonly provider: string,
    readonly sessions: number,
  ) {
    super(`provider ${provider} has ${sessions} session(s); set revoke_sessions to revoke them with it`);
  }
}

/** DeleteProvider of an enterprise IdP that enterprise-managed providers still derive their tokens from. */
export class ProviderInUseError extends SessionError {
  override name = "ProviderInUseError";
  readonly code = "PROVIDER_IN_USE";
  constructor(
    readonly provider: string,
    readonly dependents: string[],
  ) {
    super(`provider ${provider} is the enterprise IdP of ${dependents.join(", ")}; delete those first`);
  }
}

/** Discovery found no usable authorization server, or the server refused our registration. */
export class ProviderSetupError extends SessionError {
  override name = "ProviderSetupError";
  readonly code = "PROVIDER_SETUP_FAILED";
  constructor(
    /** A short code: discovery_failed, registration_refused, no_authorization_endpoint, … */
    readonly reason: string,
    options?: { cause?: unknown; detail?: string },
  ) {
    super(`provider setup failed: ${reason}${options?.detail ? ` (${options.detail})` : ""}`, options);
  }
}

/**
 * RegisterProvider refused: the authorization server does not offer what the
 * service needs (`reason` NO_REGISTRATION_OPTION, PKCE_NOT_SUPPORTED,
 * CIMD_NOT_AVAILABLE, CIMD_NOT_SUPPORTED). The message says what it offers.
 */
export class RegistrationRefusedError extends SessionError {
  override name = "RegistrationRefusedError";
  readonly code = "REGISTRATION_REFUSED";
  constructor(
    readonly reason: string,
    message: string,
  ) {
    super(message);
  }
}

/** The user (or the provider) refused the authorization: `error=` in the callback. */
export class AuthorizationDeniedError extends SessionError {
  override name = "AuthorizationDeniedError";
  readonly code = "AUTHORIZATION_DENIED";
  constructor(
    /** The RFC 6749 error code, e.g. access_denied. */
    readonly error: string,
  ) {
    super(`the authorization was not granted (${error})`);
  }
}

/** The callback's state is unknown, expired, used already, or was issued for another user or redirect URI. */
export class InvalidStateError extends SessionError {
  override name = "InvalidStateError";
  readonly code = "INVALID_STATE";
  constructor(readonly why: "missing" | "unknown" | "expired" | "used" | "other_user" | "other_redirect_uri") {
    super("the authorization state is unknown, expired, already used, or not this user's");
  }
}

/** The provider refused the authorization code (invalid_grant, a PKCE mismatch, …). */
export class CodeRejectedError extends SessionError {
  override name = "CodeRejectedError";
  readonly code = "CODE_REJECTED";
  constructor(
    readonly error: string,
    options?: { cause?: unknown },
  ) {
    super(`the provider rejected the authorization code (${error})`, options);
  }
}

/** The callback or the token response failed a check: the issuer (RFC 9207), the ID token (signature, aud, nonce). */
export class InvalidCallbackError extends SessionError {
  override name = "InvalidCallbackError";
  readonly code = "INVALID_CALLBACK";
  constructor(
    readonly check: string,
    options?: { cause?: unknown },
  ) {
    super(`the authorization response failed a check (${check})`, options);
  }
}

/** A session was stepped up (or renewed in place) authorization.max_step_ups_per_hour times in the last hour already. */
export class StepUpLimitError extends SessionError {
  override name = "StepUpLimitError";
  readonly code = "STEP_UP_LIMIT";
  constructor(readonly max: number) {
    super(`the session was stepped up ${max} time(s) in the last hour already; ask the user to sign in again later`);
  }
}
