import { isLoopbackHost } from "../config.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import type { ClientMetadataDocument } from "./client-metadata.js";
import { ProviderSetupError, RegistrationRefusedError } from "./errors.js";

/** RegisterProvider's `registration`; "" when not given. */
export type RegistrationMode = "" | "auto" | "static" | "cimd" | "dynamic";
/** How the client came to be. */
export type Registration = "static" | "cimd" | "dynamic";

/**
 * The mode a request asks for: the old `dynamic_registration` flag means
 * DYNAMIC; without a mode, AUTO for a resource_url and STATIC for an issuer.
 */
export function requestedMode(input: { registration: RegistrationMode; dynamicRegistration: boolean; resourceUrl: string }): Exclude<RegistrationMode, ""> {
  if (input.dynamicRegistration) {
    if (input.registration !== "" && input.registration !== "dynamic") {
      throw new InvalidArgumentError("dynamic_registration", `cannot be combined with registration ${input.registration.toUpperCase()}`);
    }
    return "dynamic";
  }
  if (input.registration !== "") return input.registration;
  return input.resourceUrl !== "" ? "auto" : "static";
}

/** The parts of the server's metadata the choice looks at. */
interface ServerOffers {
  client_id_metadata_document_supported?: unknown;
  registration_endpoint?: unknown;
  code_challenge_methods_supported?: unknown;
}

/** Why CIMD cannot be used by this service, or undefined when it can. */
function cimdUnavailable(document: ClientMetadataDocument | undefined): string | undefined {
  return document ? undefined : "this service serves no client metadata document (it needs an https public_url and client_metadata.redirect_uris)";
}

/**
 * How the client is obtained (the MCP authorization spec's order for AUTO):
 * a given client; else the client ID metadata document when the server
 * supports it and the service serves one; else dynamic registration when the
 * server has a registration endpoint. Otherwise the error names what the
 * server offers.
 */
export function chooseRegistration(
  mode: Exclude<RegistrationMode, "">,
  hasClientId: boolean,
  metadata: ServerOffers,
  document: ClientMetadataDocument | undefined,
): Registration {
  const cimd = metadata.client_id_metadata_document_supported === true;
  const dcr = typeof metadata.registration_endpoint === "string" && metadata.registration_endpoint !== "";
  switch (mode) {
    case "static":
      return "static";
    case "dynamic":
      if (!dcr) throw new ProviderSetupError("no_registration_endpoint");
      return "dynamic";
    case "cimd": {
      const why = cimdUnavailable(document);
      if (why) throw new RegistrationRefusedError("CIMD_NOT_AVAILABLE", `registration CIMD: ${why}`);
      if (!cimd) throw new RegistrationRefusedError("CIMD_NOT_SUPPORTED", "registration CIMD: the authorization server's metadata does not have client_id_metadata_document_supported");
      return "cimd";
    }
    case "auto": {
      if (hasClientId) return "static";
      if (cimd && !cimdUnavailable(document)) return "cimd";
      if (dcr) return "dynamic";
      const offers = cimd
        ? `it supports client ID metadata documents, but ${cimdUnavailable(document)!}; it has no registration_endpoint`
        : "it supports neither client ID metadata documents (client_id_metadata_document_supported) nor dynamic registration (registration_endpoint)";
      throw new RegistrationRefusedError("NO_REGISTRATION_OPTION", `no way to register a client at this authorization server: ${offers}; give a client_id`);
    }
  }
}

/**
 * The PKCE guard: the server's metadata must list S256 in
 * code_challenge_methods_supported (MCP authorization spec), unless the
 * operator said it supports PKCE anyway (`assume_pkce`). Returns whether the
 * guard was overridden.
 */
export function checkPkce(metadata: ServerOffers, assumePkce: boolean): boolean {
  const methods = metadata.code_challenge_methods_supported;
  if (Array.isArray(methods) && methods.includes("S256")) return false;
  if (assumePkce) return true;
  throw new RegistrationRefusedError(
    "PKCE_NOT_SUPPORTED",
    "the authorization server's metadata does not list S256 in code_challenge_methods_supported; set assume_pkce if you know it supports PKCE",
  );
}

/** The redirect URIs of a CIMD provider: those asked for, each in the document, or else all of the document's. */
export function cimdRedirectUris(asked: string[], document: ClientMetadataDocument): string[] {
  if (asked.length === 0) return document.redirectUris;
  asked.forEach((u, i) => {
    if (!document.redirectUris.includes(u)) throw new InvalidArgumentError(`redirect_uris[${i}]`, "is not in client_metadata.redirect_uris (the client metadata document)");
  });
  return asked;
}

/**
 * The application_type of a dynamic registration (OpenID Connect Dynamic
 * Client Registration; the MCP spec requires one): "native" when every
 * redirect URI is on loopback (a gateway on the user's machine), "web" for a
 * gateway served from a real host.
 */
export function applicationType(redirectUris: string[]): "web" | "native" {
  return redirectUris.length > 0 && redirectUris.every((u) => isLoopbackHost(new URL(u).hostname)) ? "native" : "web";
}
