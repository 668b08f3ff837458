import { SessionError } from "./errors.js";

/** The enterprise IdP refused to exchange the user's ID token for an ID-JAG (a 4xx); the IdP session is untouched. */
export class IdJagRefusedError extends SessionError {
  override name = "IdJagRefusedError";
  readonly code = "IDJAG_REFUSED";
  constructor(
    readonly providerError: string,
    /** The enterprise IdP's provider id. */
    readonly provider: string,
    options?: { cause?: unknown },
  ) {
    super(`the enterprise IdP ${provider} refused the ID-JAG exchange (${providerError}); the IdP session is kept`, options);
  }
}

/** The MCP authorization server rejected the ID-JAG at the JWT bearer grant (a 4xx); the IdP session is untouched. */
export class AssertionRejectedError extends SessionError {
  override name = "AssertionRejectedError";
  readonly code = "ASSERTION_REJECTED";
  constructor(
    readonly providerError: string,
    /** The enterprise-managed provider's id. */
    readonly provider: string,
    options?: { cause?: unknown },
  ) {
    super(`the authorization server of ${provider} rejected the ID-JAG (${providerError}); the IdP session is kept`, options);
  }
}

/** The authorization server does not list the ID-JAG profile in `authorization_grant_profiles_supported`. */
export class IdJagNotSupportedError extends SessionError {
  override name = "IdJagNotSupportedError";
  readonly code = "ID_JAG_NOT_SUPPORTED";
  constructor(readonly provider: string) {
    super(`the authorization server of ${provider} does not advertise urn:ietf:params:oauth:grant-profile:id-jag`);
  }
}

/** The user has no session at the enterprise IdP that an enterprise-managed provider derives its tokens from. */
export class NoIdpSessionError extends SessionError {
  override name = "NoIdpSessionError";
  readonly code = "NO_IDP_SESSION";
  constructor(
    readonly provider: string,
    readonly enterpriseIdp: string,
  ) {
    super(`no session at the enterprise IdP ${enterpriseIdp} for this user: they sign in there first`);
  }
}
