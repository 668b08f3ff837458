import type { ProviderRow } from "../db/provider-entity.js";
import { discoverIssuer, discoverResource, registerClient, type DiscoveryOptions } from "../providers/discovery.js";
import { applicationType } from "./registration-choice.js";
import type { SecretVault } from "./secret-vault.js";

/** A stored provider's registration as it changes when the client registers again. */
export type RegistrationFields = Pick<ProviderRow, "issuer" | "metadata" | "clientId" | "clientAuthMethod" | "keyId" | "clientSecretCt" | "registrationTokenCt">;

/**
 * Registers a dynamically registered provider's client again (RFC 7591),
 * with the redirect URIs and scopes it has. Discovery runs first, from the
 * protected resource when it was found from one: when the resource now names
 * another authorization server, the new client is registered there, since
 * credentials are kept per issuer. The new secrets are sealed for the row.
 */
export async function registerAgain(
  row: ProviderRow,
  deps: {
    vault: SecretVault;
    options: DiscoveryOptions;
    registration: DiscoveryOptions;
    /** The outbound policy's check of an authorization server a resource names. */
    precheck: (url: string) => Promise<void>;
    backchannelLogoutUri: string | undefined;
  },
): Promise<RegistrationFields> {
  let issuer = new URL(row.issuer);
  if (row.resourceUrl) {
    const resource = await discoverResource(new URL(row.resourceUrl), deps.options);
    await deps.precheck(resource.authorizationServers[0]!);
    issuer = new URL(resource.authorizationServers[0]!);
  }
  const server = await discoverIssuer(issuer, deps.options);
  const redirectUris = JSON.parse(row.redirectUris) as string[];
  const registered = await registerClient(
    new URL(server.metadata.issuer),
    server.algorithm,
    {
      redirectUris,
      authMethod: row.clientAuthMethod === "none" ? "none" : "client_secret_basic",
      scopes: JSON.parse(row.scopes) as string[],
      backchannelLogoutUri: deps.backchannelLogoutUri,
      applicationType: applicationType(redirectUris),
    },
    deps.registration,
  );
  const seal = (column: string, value: string | undefined) => (value === undefined ? null : deps.vault.seal("provider", row.id, column, value).blob);
  return {
    issuer: server.metadata.issuer,
    metadata: JSON.stringify({ ...server.metadata, openid: server.openid }),
    clientId: registered.clientId,
    clientAuthMethod: registered.authMethod,
    keyId: deps.vault.primaryKeyId,
    clientSecretCt: seal("client_secret", registered.clientSecret),
    registrationTokenCt: seal("registration_access_token", registered.registrationAccessToken),
  };
}
