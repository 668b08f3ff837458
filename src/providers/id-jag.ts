import { ProviderError } from "./errors.js";
import type { CallOptions, GrantResponse, ProviderClient } from "./provider-client.js";

/** RFC 8693 token exchange. */
export const TOKEN_EXCHANGE_GRANT = "urn:ietf:params:oauth:grant-type:token-exchange";
/** RFC 7523 JWT bearer grant. */
export const JWT_BEARER_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/** The token type of an Identity Assertion JWT Authorization Grant. */
export const ID_JAG_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id-jag";
export const ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token";
/** What an authorization server lists in `authorization_grant_profiles_supported` when it accepts ID-JAGs. */
export const ID_JAG_PROFILE = "urn:ietf:params:oauth:grant-profile:id-jag";

/** Whether authorization server metadata advertises the ID-JAG grant profile. */
export function advertisesIdJag(metadata: Record<string, unknown>): boolean {
  const profiles = metadata.authorization_grant_profiles_supported;
  return Array.isArray(profiles) && profiles.includes(ID_JAG_PROFILE);
}

/**
 * Step 1 (the enterprise IdP): the user's ID token exchanged for an ID-JAG
 * whose audience is the authorization server's issuer, for `resource`
 * (RFC 8693 §2.1, with the IdP client's own authentication). A response
 * whose `issued_token_type` is not an ID-JAG is refused as `wrong_issued_token_type`.
 */
export async function requestIdJag(
  idp: ProviderClient,
  idToken: string,
  target: { audience: string; resource: string; scope: string | undefined },
  options: CallOptions,
): Promise<GrantResponse> {
  const response = await idp.grant(
    TOKEN_EXCHANGE_GRANT,
    {
      requested_token_type: ID_JAG_TOKEN_TYPE,
      audience: target.audience,
      resource: target.resource,
      subject_token: idToken,
      subject_token_type: ID_TOKEN_TYPE,
      ...(target.scope ? { scope: target.scope } : {}),
    },
    options,
  );
  if (response.issuedTokenType !== ID_JAG_TOKEN_TYPE) throw new ProviderError("unavailable", "wrong_issued_token_type", { status: 400 });
  return response;
}

/** Step 2 (the MCP authorization server): the ID-JAG presented with the JWT bearer grant (RFC 7523 §2.1), with this client's credentials there. */
export function redeemIdJag(as: ProviderClient, idJag: string, options: CallOptions): Promise<GrantResponse> {
  return as.grant(JWT_BEARER_GRANT, { assertion: idJag }, options);
}
