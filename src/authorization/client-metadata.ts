import { createHash } from "node:crypto";
import { ConfigError, type ClientMetadataConfig } from "../config.js";

/** Where the document is served, under public_url. */
export const CLIENT_METADATA_PATH = "/oauth/client-metadata.json";
/** Where the JWK set of private_key_jwt is served, beside the document. */
export const CLIENT_JWKS_PATH = "/oauth/jwks.json";
/** A larger document is refused at start-up: authorization servers cap what they fetch (a few KiB). */
export const MAX_DOCUMENT_BYTES = 5 * 1024;

/** A response body served as is, with its ETag. */
export interface ServedBody {
  body: string;
  etag: string;
}

/** The service's client ID metadata document (draft-ietf-oauth-client-id-metadata-document). */
export interface ClientMetadataDocument extends ServedBody {
  /** The document's URL, which is the client_id. */
  clientId: string;
  /** The paths the HTTP listener serves (public_url's path included). */
  path: string;
  jwksPath: string | undefined;
  authMethod: "none" | "private_key_jwt";
  redirectUris: string[];
}

/** A strong ETag of a body. */
export function served(body: string): ServedBody {
  return { body, etag: `"${createHash("sha256").update(body).digest("base64url").slice(0, 27)}"` };
}

/**
 * The document for this configuration, or undefined when none is served
 * (public_url unset or not https, or no redirect_uris). `client_id` is the
 * document's own URL; a document larger than MAX_DOCUMENT_BYTES is a
 * configuration error.
 */
export function clientMetadataDocument(publicUrl: string | undefined, config: ClientMetadataConfig): ClientMetadataDocument | undefined {
  if (publicUrl === undefined || !publicUrl.startsWith("https://") || config.redirectUris.length === 0) return undefined;
  const clientId = `${publicUrl}${CLIENT_METADATA_PATH}`;
  const jwksUri = config.authMethod === "private_key_jwt" ? `${publicUrl}${CLIENT_JWKS_PATH}` : undefined;
  const document = {
    client_id: clientId,
    client_name: config.clientName,
    redirect_uris: config.redirectUris,
    grant_types: ["authorization_code", "refresh_token"],
    response_types: ["code"],
    token_endpoint_auth_method: config.authMethod,
    ...(jwksUri ? { jwks_uri: jwksUri, token_endpoint_auth_signing_alg: "ES256" } : {}),
  };
  const body = JSON.stringify(document);
  const size = Buffer.byteLength(body);
  if (size > MAX_DOCUMENT_BYTES) {
    throw new ConfigError(
      `client_metadata: the client metadata document would be ${size} bytes, more than the ${MAX_DOCUMENT_BYTES} authorization servers accept; use fewer or shorter redirect_uris or a shorter client_name`,
    );
  }
  return {
    ...served(body),
    clientId,
    path: new URL(clientId).pathname,
    jwksPath: jwksUri ? new URL(jwksUri).pathname : undefined,
    authMethod: config.authMethod,
    redirectUris: config.redirectUris,
  };
}
