import type { ProviderConfig } from "../config.js";
import type { ProviderRow } from "../db/provider-entity.js";
import type { ProviderClient } from "../providers/provider-client.js";
import type { ClientSigningKeys } from "./client-keys.js";
import type { ClientMetadataDocument } from "./client-metadata.js";
import type { Registration } from "./registration-choice.js";
import type { SecretVault } from "./secret-vault.js";

type ClientAuthMethod = ProviderConfig["clientAuthMethod"];

/** A provider as ListProviders shows it: no secret. */
export interface ProviderView {
  id: string;
  issuer: string;
  resourceUrl: string | undefined;
  clientId: string;
  clientAuthMethod: string;
  source: "config" | "runtime";
  registration: Registration;
  endpoints: { authorization?: string; token?: string; revocation?: string; registration?: string; jwks?: string };
  createdAt: Date;
  defaultResource: string | undefined;
  scopes: string[];
  refreshScopes: string[];
  redirectUris: string[];
  allowInsecureHttp: boolean;
  openid: boolean;
  audienceTokens: "refresh" | "exchange";
  /** From a protected resource: its 401 challenge's scope and its metadata's scopes_supported. */
  challengeScopes: string[];
  scopesSupported: string[];
  kind: "oauth" | "enterprise_managed";
  enterpriseIdp: string | undefined;
}

/** A stored JSON list of scopes; undefined when empty. */
function nonEmpty(json: string): string[] | undefined {
  const list = JSON.parse(json) as string[];
  return list.length ? list : undefined;
}

function str(v: unknown): string | undefined {
  return typeof v === "string" && v !== "" ? v : undefined;
}

/** What turning a stored provider into a client configuration needs. */
export interface RowContext {
  vault: SecretVault;
  /** The document served now: a CIMD provider's auth method follows it. */
  clientDocument?: ClientMetadataDocument;
  /** The client signing keys of private_key_jwt. */
  signingKeys?: ClientSigningKeys;
}

/** The client configuration of a stored provider (its secret opened). */
export function configOfRow(row: ProviderRow, context: RowContext): ProviderConfig {
  const metadata = JSON.parse(row.metadata) as Record<string, unknown> & { openid?: boolean };
  const { openid, ...server } = metadata;
  return {
    id: row.id,
    issuer: row.issuer,
    clientId: row.clientId,
    clientSecret: row.clientSecretCt ? context.vault.open("provider", row.id, "client_secret", row.keyId, row.clientSecretCt) : undefined,
    ...clientAuthOf(row, context),
    allowInsecureHttp: row.allowInsecureHttp,
    refreshMarginSeconds: 60,
    scopes: nonEmpty(row.scopes),
    refreshScopes: nonEmpty(row.refreshScopes),
    tokenEndpoint: undefined,
    revocationEndpoint: undefined,
    defaultTokenLifetimeSeconds: 300,
    source: "runtime",
    redirectUris: JSON.parse(row.redirectUris) as string[],
    defaultResource: row.defaultResource ?? undefined,
    audienceTokens: row.audienceTokens === "exchange" ? "exchange" : "refresh",
    exchangeTarget: row.exchangeTarget,
    ...(row.kind === "enterprise_managed" ? { kind: row.kind, enterpriseIdp: row.enterpriseIdp ?? undefined } : {}),
    metadata: server,
    runtime: {
      registration: row.registration,
      resourceUrl: row.resourceUrl ?? undefined,
      openid: openid === true,
      createdAt: row.createdAt,
      challengeScopes: JSON.parse(row.challengeScopes ?? "[]") as string[],
      scopesSupported: JSON.parse(row.scopesSupported ?? "[]") as string[],
      resourceMetadataUrl: row.resourceMetadataUrl ?? undefined,
    },
  };
}

/**
 * How a stored provider's client authenticates. A CIMD provider follows the
 * document served now (the operator may have changed its method); with
 * private_key_jwt it signs with the current client signing key.
 */
function clientAuthOf(row: ProviderRow, context: RowContext): Pick<ProviderConfig, "clientAuthMethod" | "assertionKey"> {
  const method = row.registration === "cimd" ? (context.clientDocument?.authMethod ?? row.clientAuthMethod) : row.clientAuthMethod;
  if (method !== "private_key_jwt") return { clientAuthMethod: method as ClientAuthMethod };
  const keys = context.signingKeys;
  return { clientAuthMethod: "private_key_jwt", assertionKey: keys ? () => keys.signer() : undefined };
}

/** A provider as ListProviders shows it, from its client and (when known) its metadata; `startedAt`: when YAML providers came to be. */
export function viewOfClient(client: ProviderClient, metadata: { [k: string]: unknown } | undefined, startedAt: Date): ProviderView {
  const c = client.config;
  return {
    id: c.id,
    issuer: str(metadata?.issuer) ?? c.issuer,
    resourceUrl: c.runtime?.resourceUrl,
    clientId: c.clientId,
    clientAuthMethod: c.clientAuthMethod,
    source: c.source,
    registration: c.runtime?.registration ?? "static",
    endpoints: {
      authorization: str(metadata?.authorization_endpoint),
      token: str(metadata?.token_endpoint) ?? c.tokenEndpoint,
      revocation: str(metadata?.revocation_endpoint) ?? c.revocationEndpoint,
      registration: str(metadata?.registration_endpoint),
      jwks: str(metadata?.jwks_uri),
    },
    createdAt: c.runtime?.createdAt ?? startedAt,
    defaultResource: c.defaultResource,
    scopes: c.scopes ?? [],
    refreshScopes: c.refreshScopes ?? [],
    redirectUris: c.redirectUris,
    allowInsecureHttp: c.allowInsecureHttp,
    openid: c.runtime?.openid ?? Array.isArray(metadata?.id_token_signing_alg_values_supported),
    audienceTokens: c.audienceTokens,
    challengeScopes: c.runtime?.challengeScopes ?? [],
    scopesSupported: c.runtime?.scopesSupported ?? [],
    kind: c.kind ?? "oauth",
    enterpriseIdp: c.enterpriseIdp,
  };
}
