import type { ProviderRegistry } from "../providers/provider-client.js";
import { advertisesIdJag } from "../providers/id-jag.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import { IdJagNotSupportedError } from "../sessions/id-jag-errors.js";
import { checkResource } from "../sessions/validation.js";

/** What RegisterProvider is told about an enterprise-managed provider. */
export interface ManagedInput {
  id: string;
  enterpriseIdp: string;
  /** The resource, with `issuer` (required there); with `resource_url`, empty or the resource its metadata names. */
  resource: string;
  resourceUrl: string;
  dynamicRegistration: boolean;
}

/**
 * The checks of an enterprise-managed provider before anything is fetched:
 * a pre-registered client, and an enterprise IdP that is another configured
 * provider, not enterprise-managed, speaking OpenID Connect (its metadata
 * names ID token signing algorithms; a YAML provider is asked for it).
 */
export async function checkManagedInput(input: ManagedInput, registry: ProviderRegistry, deadline: number): Promise<void> {
  if (input.dynamicRegistration) throw new InvalidArgumentError("dynamic_registration", "is not offered for enterprise_managed (give the pre-registered client_id)");
  if (input.enterpriseIdp === "") throw new InvalidArgumentError("enterprise_idp", "is required for kind enterprise_managed");
  const idp = input.enterpriseIdp === input.id ? undefined : registry.get(input.enterpriseIdp);
  if (!idp || idp.config.kind === "enterprise_managed") throw new InvalidArgumentError("enterprise_idp", "must name another configured provider (not an enterprise_managed one)");
  const openid = idp.config.runtime?.openid ?? (await idp.metadata({ deadline }).then((m) => Array.isArray(m.id_token_signing_alg_values_supported), () => false));
  if (!openid) throw new InvalidArgumentError("enterprise_idp", "must be an OpenID Connect provider (its sessions hold the users' ID tokens)");
  if (input.resource !== "") checkResource(input.resource, "resource");
  else if (input.resourceUrl === "") throw new InvalidArgumentError("resource", "is required for enterprise_managed with issuer");
}

/** The resource an enterprise-managed provider's tokens are for: the one given, which must match what the resource's metadata names, if any. */
export function managedResource(input: ManagedInput, discovered: string | undefined): string {
  if (discovered !== undefined && input.resource !== "" && input.resource !== discovered) {
    throw new InvalidArgumentError("resource", "must be empty or the resource that resource_url's metadata names");
  }
  return input.resource || discovered!;
}

/** Refuses an authorization server whose metadata does not advertise the ID-JAG grant profile. */
export function requireIdJagProfile(id: string, metadata: Record<string, unknown>): void {
  if (!advertisesIdJag(metadata)) throw new IdJagNotSupportedError(id);
}
