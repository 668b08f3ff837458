import * as oauth from "oauth4webapi";
import * as oidc from "openid-client";
import { ProviderError } from "./errors.js";
import { tryParseBearerChallenge } from "./challenge.js";
import { findRefusal } from "./outbound-policy.js";
import type { FetchLike } from "./provider-client.js";

/** How discovery may reach a server. */
export interface DiscoveryOptions {
  fetch: FetchLike;
  /** Plain http is accepted (loopback servers in development). */
  allowInsecureHttp: boolean;
  timeoutMs: number;
}

/** An authorization server as discovered. */
export interface DiscoveredServer {
  metadata: oidc.ServerMetadata;
  /** How its metadata was found: RFC 8414 ("oauth2") or OpenID Connect discovery ("oidc"). */
  algorithm: "oauth2" | "oidc";
  /** Whether it speaks OpenID Connect (it names ID token signing algorithms). */
  openid: boolean;
}

/** A protected resource (RFC 9728) and the authorization servers it names. */
export interface DiscoveredResource {
  /** Its canonical resource identifier, as its metadata states it (RFC 8707's `resource`). */
  resource: string;
  authorizationServers: string[];
  /** The `scope` of the resource's 401 Bearer challenge; empty when it named none (or did not answer 401). */
  challengeScopes: string[];
  /** The metadata's `scopes_supported` (valid scope tokens only); empty when absent. */
  scopesSupported: string[];
  /** Where the metadata was read. */
  metadataUrl: string;
}

function fetchFor(options: DiscoveryOptions): oidc.CustomFetch {
  return (url, init) => options.fetch(url, { ...init, signal: AbortSignal.timeout(options.timeoutMs) } as RequestInit);
}

/**
 * Discovers an authorization server from its issuer, as the MCP
 * authorization spec does: RFC 8414 metadata first
 * (`/.well-known/oauth-authorization-server`, inserted before the issuer's
 * path), then OpenID Connect discovery (`/.well-known/openid-configuration`
 * appended to it). openid-client checks that the metadata names the issuer.
 */
export async function discoverIssuer(issuer: URL, options: DiscoveryOptions): Promise<DiscoveredServer> {
  let firstError: unknown;
  for (const algorithm of ["oauth2", "oidc"] as const) {
    try {
      const config = await oidc.discovery(issuer, "discovery", undefined, undefined, {
        algorithm,
        execute: options.allowInsecureHttp ? [oidc.allowInsecureRequests] : [],
        [oidc.customFetch]: fetchFor(options),
        timeout: options.timeoutMs / 1000,
      });
      const metadata = { ...config.serverMetadata() };
      return { metadata, algorithm, openid: Array.isArray(metadata.id_token_signing_alg_values_supported) };
    } catch (err) {
      // A destination the outbound policy refuses is refused whichever well-known path is asked.
      if (findRefusal(err)) throw err;
      firstError ??= err;
    }
  }
  throw new ProviderError("unavailable", "discovery_failed", { cause: firstError });
}

/** The `resource_metadata` URL of a `WWW-Authenticate: Bearer …` challenge (RFC 9728, section 5.1), if any. */
export function resourceMetadataUrl(wwwAuthenticate: string | null): string | undefined {
  if (!wwwAuthenticate) return undefined;
  const m = /(?:^|[\s,])resource_metadata\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))/i.exec(wwwAuthenticate);
  const value = m?.[1]?.replace(/\\(.)/g, "$1") ?? m?.[2];
  return value && /^https?:\/\//i.test(value) ? value : undefined;
}

/** scopes_supported as published: its valid scope tokens, at most 64. */
function supportedScopes(server: oauth.ResourceServer): string[] {
  const list: unknown = server.scopes_supported;
  if (!Array.isArray(list)) return [];
  return [...new Set(list.filter((s): s is string => typeof s === "string" && /^[\x21\x23-\x5B\x5D-\x7E]{1,256}$/.test(s)))].slice(0, 64);
}

/**
 * Finds the authorization servers of a protected resource (an MCP server)
 * from its RFC 9728 metadata: first at the path-aware well-known URL
 * (`/.well-known/oauth-protected-resource` inserted before the resource's
 * path), else at the `resource_metadata` its `401` challenge names. The
 * metadata's `resource` must be the resource asked about. The resource is
 * asked once, unauthenticated, either way: its challenge's `scope` is what
 * MCP clients ask for first (a probe that fails costs nothing when the
 * well-known URL answered).
 */
export async function discoverResource(resourceUrl: URL, options: DiscoveryOptions): Promise<DiscoveredResource> {
  const http = {
    [oauth.customFetch]: fetchFor(options),
    [oauth.allowInsecureRequests]: options.allowInsecureHttp,
  };
  const accept = (server: oauth.ResourceServer, metadataUrl: string, challengeScopes: string[]): DiscoveredResource => {
    const servers = server.authorization_servers ?? [];
    if (servers.length === 0) throw new ProviderError("unavailable", "resource_names_no_authorization_server");
    return { resource: server.resource, authorizationServers: servers, challengeScopes, scopesSupported: supportedScopes(server), metadataUrl };
  };
  const get = (url: string, accept: string) =>
    options.fetch(url, { method: "GET", headers: { accept }, redirect: "manual", signal: AbortSignal.timeout(options.timeoutMs) });
  /** The resource's own answer: its 401 challenge, if it gave one. */
  const probe = async () => {
    const res = await get(resourceUrl.href, "application/json, text/event-stream");
    await res.body?.cancel();
    return res.status === 401 ? res.headers.get("www-authenticate") : null;
  };
  const wellKnown = await oauth.resourceDiscoveryRequest(resourceUrl, http);
  if (wellKnown.ok) {
    const server = await oauth.processResourceDiscoveryResponse(resourceUrl, wellKnown);
    const challenge = await probe().catch((err: unknown) => {
      if (findRefusal(err)) throw err;
      return null;
    });
    return accept(server, wellKnown.url || wellKnownUrl(resourceUrl), tryParseBearerChallenge(challenge)?.scopes ?? []);
  }
  await wellKnown.body?.cancel();
  // Not at the well-known URL: ask the resource itself, which should answer 401 with a challenge naming it.
  const challenge = await probe();
  const named = resourceMetadataUrl(challenge);
  if (!named) throw new ProviderError("unavailable", `resource_metadata_not_found_${wellKnown.status}`);
  const metadataUrl = new URL(named);
  if (metadataUrl.protocol === "http:" && !options.allowInsecureHttp) throw new ProviderError("unavailable", "resource_metadata_insecure");
  const response = await get(metadataUrl.href, "application/json");
  return accept(await oauth.processResourceDiscoveryResponse(resourceUrl, response), metadataUrl.href, tryParseBearerChallenge(challenge)?.scopes ?? []);
}

/** RFC 9728's path-aware well-known URL of a resource. */
function wellKnownUrl(resourceUrl: URL): string {
  const path = resourceUrl.pathname === "/" ? "" : resourceUrl.pathname;
  return new URL(`/.well-known/oauth-protected-resource${path}`, resourceUrl.origin).href;
}

/** What dynamic registration (RFC 7591) gave us. */
export interface RegisteredClient {
  clientId: string;
  clientSecret: string | undefined;
  authMethod: "client_secret_basic" | "client_secret_post" | "none";
  registrationAccessToken: string | undefined;
}

/**
 * Registers a client at the server's registration endpoint (RFC 7591) for
 * the authorization code and refresh token grants, with our redirect URIs,
 * the application_type the MCP spec requires and, when given, a back-channel
 * logout URI.
 */
export async function registerClient(
  issuer: URL,
  algorithm: "oauth2" | "oidc",
  request: {
    redirectUris: string[];
    authMethod: "client_secret_basic" | "none";
    scopes: string[];
    backchannelLogoutUri?: string;
    applicationType: "web" | "native";
  },
  options: DiscoveryOptions,
): Promise<RegisteredClient> {
  const config = await oidc.dynamicClientRegistration(
    issuer,
    {
      client_name: "token-service",
      application_type: request.applicationType,
      redirect_uris: request.redirectUris,
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: request.authMethod,
      ...(request.scopes.length ? { scope: request.scopes.join(" ") } : {}),
      // With a session required, the provider puts `sid` in ID tokens and logout tokens: a logout ends only that login.
      ...(request.backchannelLogoutUri ? { backchannel_logout_uri: request.backchannelLogoutUri, backchannel_logout_session_required: true } : {}),
    },
    undefined,
    {
      algorithm,
      execute: options.allowInsecureHttp ? [oidc.allowInsecureRequests] : [],
      [oidc.customFetch]: fetchFor(options),
      timeout: options.timeoutMs / 1000,
    },
  );
  const client = config.clientMetadata();
  const method = client.token_endpoint_auth_method;
  return {
    clientId: client.client_id,
    clientSecret: typeof client.client_secret === "string" ? client.client_secret : undefined,
    authMethod: method === "client_secret_post" || method === "none" ? method : "client_secret_basic",
    registrationAccessToken: typeof client.registration_access_token === "string" ? client.registration_access_token : undefined,
  };
}
