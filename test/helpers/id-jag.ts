import { randomBytes } from "node:crypto";
import { createRemoteJWKSet, decodeProtectedHeader, jwtVerify, SignJWT } from "jose";
import type Provider from "oidc-provider";
import { errors } from "oidc-provider";
import { startTestProvider, TOKEN_EXCHANGE, type TestProvider } from "./oidc-provider.js";

export const ID_JAG_TYPE = "urn:ietf:params:oauth:token-type:id-jag";
export const JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const ID_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:id_token";
const PROFILE = "urn:ietf:params:oauth:grant-profile:id-jag";

/** The enterprise IdP: a test provider whose token exchange turns a valid ID token of the caller into an ID-JAG. */
export interface EnterpriseIdp extends TestProvider {
  /** Audiences (authorization server issuers) the IdP's policy refuses (invalid_grant). */
  readonly refusedAudiences: Set<string>;
  /** The ID-JAGs it issued (the JWT, its header typ and claims), in order. */
  readonly issued: Array<{ token: string; typ: string | undefined; claims: Record<string, unknown> }>;
}

/**
 * A real oidc-provider as the enterprise IdP. Its RFC 8693 grant validates
 * the subject ID token (its own signature, issuer, expiry, and `aud` the
 * authenticated client) and issues an ID-JAG: a JWT with header typ
 * `oauth-id-jag+jwt` and iss, sub, aud (the `audience` asked for), client_id
 * (the client registered at that authorization server, from `clientIdAt`),
 * resource, jti, exp and iat, signed with its keys. Lifetime 300 s.
 */
export async function startEnterpriseIdp(options: { clientIdAt: (audience: string) => string; idTokenTtl?: number; accessTokenTtl?: number; resourceScopes?: string[] }): Promise<EnterpriseIdp> {
  const refusedAudiences = new Set<string>();
  const issued: EnterpriseIdp["issued"] = [];
  let issuer = "";
  const configure = (provider: Provider, key: import("node:crypto").KeyObject) => {
    const jwks = () => createRemoteJWKSet(new URL(`${issuer}/jwks`));
    provider.registerGrantType(
      TOKEN_EXCHANGE,
      async (ctx) => {
        const params = ctx.oidc.params as Record<string, string | undefined>;
        if (params.subject_token_type !== ID_TOKEN_TYPE || params.requested_token_type !== ID_JAG_TYPE) throw new errors.InvalidRequest("only ID token to ID-JAG");
        const client = ctx.oidc.client!.clientId;
        let sub: string;
        try {
          const { payload } = await jwtVerify(params.subject_token ?? "", jwks(), { issuer, audience: client });
          sub = String(payload.sub);
        } catch {
          throw new errors.InvalidGrant("subject token is not a valid ID token for this client");
        }
        const audience = params.audience ?? "";
        if (!audience || !params.resource) throw new errors.InvalidRequest("audience and resource are required");
        if (refusedAudiences.has(audience)) throw new errors.InvalidGrant("policy: this user may not use that authorization server");
        const claims = { sub, aud: audience, client_id: options.clientIdAt(audience), resource: params.resource, jti: randomBytes(12).toString("hex") };
        const idJag = await new SignJWT(claims)
          .setProtectedHeader({ alg: "RS256", kid: "test", typ: "oauth-id-jag+jwt" })
          .setIssuer(issuer)
          .setIssuedAt()
          .setExpirationTime("300s")
          .sign(key);
        issued.push({ token: idJag, typ: decodeProtectedHeader(idJag).typ, claims });
        ctx.body = { access_token: idJag, issued_token_type: ID_JAG_TYPE, token_type: "N_A", expires_in: 300 };
      },
      ["subject_token", "subject_token_type", "requested_token_type", "audience", "resource", "scope"],
    );
  };
  const idp = await startTestProvider({ configure, idTokenTtl: options.idTokenTtl, accessTokenTtl: options.accessTokenTtl, resourceScopes: options.resourceScopes });
  issuer = idp.issuer;
  return Object.assign(idp, { refusedAudiences, issued });
}

/** The MCP authorization server: accepts ID-JAGs from one IdP with the JWT bearer grant. */
export interface McpAuthorizationServer extends TestProvider {
  /** Why it rejected assertions (invalid_grant), by reason: signature, typ, aud, exp, replay, client_id, resource. */
  readonly rejected: Record<string, number>;
  /** Rejects every assertion from now on (invalid_grant, reason "policy"), or no longer. */
  setRejectAll(on: boolean): void;
}

/**
 * A real oidc-provider as the MCP server's authorization server, advertising
 * `authorization_grant_profiles_supported` (unless `advertise` is false). Its
 * RFC 7523 grant validates the ID-JAG: signature by the IdP's JWKS, typ
 * `oauth-id-jag+jwt`, iss the IdP, aud its own issuer, exp, a jti never seen
 * before, and client_id the authenticated client. It then issues a JWT access
 * token (RFC 9068) for the ID-JAG's resource, for its sub.
 */
export async function startMcpAuthorizationServer(idpIssuer: string, options: { advertise?: boolean; accessTokenTtl?: number } = {}): Promise<McpAuthorizationServer> {
  const rejected: Record<string, number> = {};
  const seen = new Set<string>();
  let issuer = "";
  let ttl = options.accessTokenTtl ?? 300;
  const state = { rejectAll: false };
  const reject = (reason: string): never => {
    rejected[reason] = (rejected[reason] ?? 0) + 1;
    throw new errors.InvalidGrant(`assertion rejected (${reason})`);
  };
  const configure = (provider: Provider) => {
    const jwks = createRemoteJWKSet(new URL(`${idpIssuer}/jwks`));
    provider.registerGrantType(
      JWT_BEARER,
      async (ctx) => {
        const assertion = String((ctx.oidc.params as Record<string, unknown>).assertion ?? "");
        if (state.rejectAll) reject("policy");
        let claims: Record<string, unknown>;
        try {
          ({ payload: claims } = await jwtVerify(assertion, jwks, { issuer: idpIssuer, audience: issuer, typ: "oauth-id-jag+jwt", requiredClaims: ["jti", "exp", "iat", "sub"] }));
        } catch (err) {
          const claim = (err as { claim?: string }).claim;
          reject(claim === "typ" ? "typ" : claim === "aud" ? "aud" : (err as { code?: string }).code === "ERR_JWT_EXPIRED" ? "exp" : "signature");
        }
        if (seen.has(String(claims!.jti))) reject("replay");
        seen.add(String(claims!.jti));
        if (claims!.client_id !== ctx.oidc.client!.clientId) reject("client_id");
        const resource = claims!.resource;
        if (typeof resource !== "string" || !/^https?:\/\//.test(resource)) reject("resource");
        const accountId = String(claims!.sub);
        const grant = new provider.Grant({ accountId, clientId: ctx.oidc.client!.clientId });
        grant.addResourceScope(resource as string, "mcp:tools");
        const grantId = await grant.save();
        const at = new provider.AccessToken({ accountId, client: ctx.oidc.client!, grantId, gty: "jwt_bearer", scope: "mcp:tools" });
        at.resourceServer = new provider.ResourceServer(resource as string, { scope: "mcp:tools", audience: resource as string, accessTokenFormat: "jwt", accessTokenTTL: ttl, jwt: { sign: { alg: "RS256" } } });
        const value = await at.save();
        ctx.body = { access_token: value, token_type: "Bearer", expires_in: at.expiration, scope: at.scope };
      },
      ["assertion", "scope", "resource"],
    );
  };
  const as = await startTestProvider({
    configure,
    grantTypes: [JWT_BEARER],
    clientId: "mcp-client",
    discovery: options.advertise === false ? undefined : { authorization_grant_profiles_supported: [PROFILE] },
  });
  issuer = as.issuer;
  const setTtl = as.setAccessTokenTtl.bind(as);
  return Object.assign(as, {
    rejected,
    setAccessTokenTtl(seconds: number) {
      ttl = seconds;
      setTtl(seconds);
    },
    setRejectAll(on: boolean) {
      state.rejectAll = on;
    },
  });
}

/** The YAML entry of an enterprise-managed provider at `as` for `resource`, whose enterprise IdP is `corp`. */
export function managedEntry(as: McpAuthorizationServer, resource: string, id = "crm") {
  return { id, kind: "enterprise_managed", enterprise_idp: "corp", issuer: as.issuer, client_id: as.clientId, client_secret: as.clientSecret, allow_insecure_http: true, default_resource: resource };
}
