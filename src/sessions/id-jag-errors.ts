import { SessionError } from "./errors.js";

/** A provider's 4xx to one step of the ID-JAG flow; `provider` is the provider that answered, `providerError` its OAuth error code. */
abstract class IdJagStepError extends SessionError {
  constructor(
    readonly providerError: string,
    readonly provider: string,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

/** The enterprise IdP refused to exchange the user's ID token for an ID-JAG (a 4xx); the IdP session is untouched. */
export class IdJagRefusedError extends IdJagStepError {
  override name = "IdJagRefusedError";
  readonly code = "IDJAG_REFUSED";
  constructor(providerError: string, idp: string, options?: { cause?: unknown }) {
    super(providerError, idp, `the enterprise IdP ${idp} refused the ID-JAG exchange (${providerError}); the IdP session is kept`, options);
  }
}

/** The MCP authorization server rejected the ID-JAG at the JWT bearer grant (a 4xx); the IdP session is untouched. */
export class AssertionRejectedError extends IdJagStepError {
  override name = "AssertionRejectedError";
  readonly code = "ASSERTION_REJECTED";
  constructor(providerError: string, provider: string, options?: { cause?: unknown }) {
    super(providerError, provider, `the authorization server of ${provider} rejected the ID-JAG (${providerError}); the IdP session is kept`, options);
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
