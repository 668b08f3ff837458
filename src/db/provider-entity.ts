import { EntitySchema } from "@mikro-orm/core";

/**
 * A provider registered at run time (RegisterProvider). Its client secret and
 * registration access token are stored only as AES-256-GCM ciphertext, bound
 * to this row's id and column; the rest is queryable in clear.
 */
export interface ProviderRow {
  id: string;
  issuer: string;
  /** The protected resource it was discovered from (RFC 9728), if any. */
  resourceUrl: string | null;
  /** Canonical URI of that resource: the default RFC 8707 resource. */
  defaultResource: string | null;
  clientId: string;
  clientAuthMethod: string;
  registration: "static" | "dynamic" | "cimd";
  /** Key of the ciphertexts below. */
  keyId: string;
  clientSecretCt: Buffer | null;
  registrationTokenCt: Buffer | null;
  /** The authorization server's metadata as discovered, JSON. */
  metadata: string;
  /** JSON arrays. */
  redirectUris: string;
  scopes: string;
  /** Down-scoping on refresh (RegisterProvider's refresh_scopes), JSON; "[]": none. */
  refreshScopes: string;
  allowInsecureHttp: boolean;
  /** How audience tokens are obtained: refresh (RFC 8707) or exchange (RFC 8693). */
  audienceTokens: "refresh" | "exchange";
  /** For exchange: resource, audience or both. */
  exchangeTarget: "resource" | "audience" | "both";
  /** From a protected resource: its 401 challenge's scope and its metadata's scopes_supported (JSON arrays), and that metadata's URL. */
  challengeScopes?: string;
  scopesSupported?: string;
  resourceMetadataUrl?: string | null;
  /** oauth, or enterprise_managed (ID-JAG: tokens derived from sessions at `enterpriseIdp`). */
  kind: "oauth" | "enterprise_managed";
  enterpriseIdp: string | null;
  createdAt: Date;
  version: number;
}

export const ProviderSchema = new EntitySchema<ProviderRow>({
  name: "Provider",
  tableName: "providers",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    issuer: { type: "text" },
    resourceUrl: { type: "text", nullable: true },
    defaultResource: { type: "text", nullable: true },
    clientId: { type: "string", length: 255 },
    clientAuthMethod: { type: "string", length: 32 },
    registration: { type: "string", length: 16 },
    keyId: { type: "string", length: 64 },
    clientSecretCt: { type: "blob", nullable: true },
    registrationTokenCt: { type: "blob", nullable: true },
    metadata: { type: "text" },
    redirectUris: { type: "text" },
    scopes: { type: "text" },
    refreshScopes: { type: "text", default: "[]" },
    allowInsecureHttp: { type: "boolean" },
    audienceTokens: { type: "string", length: 16, default: "refresh" },
    exchangeTarget: { type: "string", length: 16, default: "resource" },
    challengeScopes: { type: "text", default: "[]" },
    scopesSupported: { type: "text", default: "[]" },
    resourceMetadataUrl: { type: "text", nullable: true },
    kind: { type: "string", length: 32, default: "oauth" },
    enterpriseIdp: { type: "string", length: 64, nullable: true },
    createdAt: { type: "datetime", length: 3 },
    version: { type: "integer" },
  },
});

/**
 * A started authorization (StartAuthorization), kept until it is used once
 * or expires. The state itself is not stored, only its SHA-256 (the row id);
 * the PKCE verifier, nonce, scopes and resources are one sealed payload.
 */
export interface AuthorizationStateRow {
  id: string;
  userId: string;
  provider: string;
  redirectUri: string;
  keyId: string;
  payloadCt: Buffer;
  createdAt: Date;
  expiresAt: Date;
  usedAt: Date | null;
}

export const AuthorizationStateSchema = new EntitySchema<AuthorizationStateRow>({
  name: "AuthorizationState",
  tableName: "authorization_states",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    userId: { type: "string", length: 256 },
    provider: { type: "string", length: 64 },
    redirectUri: { type: "text" },
    keyId: { type: "string", length: 64 },
    payloadCt: { type: "blob" },
    createdAt: { type: "datetime", length: 3 },
    expiresAt: { type: "datetime", length: 3 },
    usedAt: { type: "datetime", length: 3, nullable: true },
  },
  indexes: [{ name: "authorization_states_expires_idx", properties: ["expiresAt"] }],
});

/** A back-channel logout token already accepted (its `jti`), kept for the token's lifetime to refuse a replay. */
export interface LogoutTokenRow {
  /** SHA-256 of provider and jti. */
  id: string;
  provider: string;
  expiresAt: Date;
}

export const LogoutTokenSchema = new EntitySchema<LogoutTokenRow>({
  name: "LogoutToken",
  tableName: "logout_tokens",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    provider: { type: "string", length: 64 },
    expiresAt: { type: "datetime", length: 3 },
  },
  indexes: [{ name: "logout_tokens_expires_idx", properties: ["expiresAt"] }],
});

/**
 * A session's access token for one audience (RFC 8707 resource), obtained
 * with a refresh token grant or a token exchange and kept apart from the
 * session's own token. The ciphertext is bound to the session and resource.
 */
export interface AudienceTokenRow {
  /** SHA-256 of session id and resource. */
  id: string;
  sessionId: string;
  resource: string;
  keyId: string;
  accessCt: Buffer;
  tokenType: string;
  scope: string;
  expiresAt: Date;
  issuedAt: Date;
  updatedAt: Date;
}

export const AudienceTokenSchema = new EntitySchema<AudienceTokenRow>({
  name: "AudienceToken",
  tableName: "audience_tokens",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    sessionId: { type: "string", length: 64 },
    resource: { type: "text" },
    keyId: { type: "string", length: 64 },
    accessCt: { type: "blob" },
    tokenType: { type: "string", length: 64 },
    scope: { type: "text" },
    expiresAt: { type: "datetime", length: 3 },
    issuedAt: { type: "datetime", length: 3 },
    updatedAt: { type: "datetime", length: 3 },
  },
  indexes: [{ name: "audience_tokens_session_idx", properties: ["sessionId"] }],
});
