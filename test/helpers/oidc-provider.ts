import { createHash, generateKeyPairSync, randomBytes, type KeyObject } from "node:crypto";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { decodeProtectedHeader, SignJWT } from "jose";
import Provider, { errors } from "oidc-provider";

/** RFC 8693 token exchange. */
export const TOKEN_EXCHANGE = "urn:ietf:params:oauth:grant-type:token-exchange";
const ACCESS_TOKEN_TYPE = "urn:ietf:params:oauth:token-type:access_token";

/** A token endpoint fault to inject into the next token requests. */
export type TokenFault =
  | { kind: "status"; status: number; retryAfter?: string; body?: string; headers?: Record<string, string> }
  /** Hangs until the client disconnects (the request is then never processed) or `ms` pass. */
  | { kind: "hang"; ms?: number }
  /** Waits, then processes the request normally. */
  | { kind: "delay"; ms: number }
  /** Processes the request at once, then holds the answer back `ms`. */
  | { kind: "slow_answer"; ms: number };

/** What the provider saw, for assertions. */
export interface ProviderStats {
  /** Refresh-grant requests from the service (setup requests excluded). */
  refreshes: number;
  /** Most refresh requests ever in flight at once. */
  maxConcurrentRefreshes: number;
  /** invalid_grant answers, e.g. a reused (rotated) refresh token. */
  invalidGrants: number;
  /** Revocation requests. */
  revocations: number;
  /** Discovery document fetches. */
  discoveries: number;
  /** Duration of each refresh request as the provider saw it, in ms (its own latency). */
  refreshMs: number[];
  /** When each refresh request reached the provider's middleware, epoch ms (fractional), in the order they came. */
  refreshArrivedAt: number[];
  /** Token requests from the service (setup excluded), in order: grant type, the target parameters and the scope sent. */
  tokenRequests: Array<{ grantType: string; resource: string[]; audience: string[]; scope: string | undefined }>;
  /** The `kid` of each client assertion (private_key_jwt) on the token endpoint, in order. */
  assertionKids: string[];
  /** Dynamic registration requests (RFC 7591). */
  registrations: number;
}

export interface TestTokenSet {
  access_token: string;
  refresh_token: string;
  id_token: string;
  token_type: string;
  expires_in: number;
  scope: string;
}

export interface TestProvider {
  readonly issuer: string;
  readonly clientId: string;
  readonly clientSecret: string;
  readonly stats: ProviderStats;
  /** Faults applied, in order, to the next refresh requests. */
  readonly faults: TokenFault[];
  /** Faults applied, in order, to the next revocation requests. */
  readonly revocationFaults: TokenFault[];
  /** Access token lifetime for tokens issued from now on. */
  setAccessTokenTtl(seconds: number): void;
  /** This provider as an entry of the service's `providers:` configuration (plain HTTP allowed). */
  configEntry(id?: string): { id: string; issuer: string; client_id: string; client_secret: string; allow_insecure_http: true };
  /**
   * Logs a user in: returns a full token set from a real token endpoint
   * response. With `resources`, the grant covers those RFC 8707 resources
   * (scope mcp:tools on each); the access token returned is for none of them.
   * `scope` is the OpenID Connect scope granted (default `openid offline_access`):
   * `openid` alone is what a login asking `offline_access` without
   * `prompt=consent` is granted.
   */
  login(accountId: string, options?: { resources?: string[]; scope?: string }): Promise<TestTokenSet>;
  /** The userinfo endpoint's HTTP status for an access token (200: the token works there). */
  userinfo(accessToken: string): Promise<number>;
  /** Targets the token-exchange grant refuses with invalid_target. */
  readonly refusedExchangeTargets: Set<string>;
  /** Uses a refresh token directly at the token endpoint (not counted as a service refresh). */
  redeem(refreshToken: string): Promise<{ status: number; body: Record<string, unknown> }>;
  /** Provider-side view of a token (RFC 7662). */
  introspect(token: string): Promise<{ active: boolean }>;
  /** The redirect URI the test clients are registered with (nothing listens there). */
  readonly redirectUri: string;
  /** A public client (token_endpoint_auth_method none) with the same redirect URI. */
  readonly publicClientId: string;
  /**
   * Plays the browser: follows `authorizationUrl` through the provider's
   * login and consent for `accountId` (or refuses, with `deny`), and returns
   * the URL the provider redirects back to (with code, state and iss, or error).
   * With `grantScopes`, the consent grants only those of the requested scopes
   * (the user unticked the others).
   */
  authorize(authorizationUrl: string, accountId: string, options?: { deny?: boolean; grantScopes?: string[] }): Promise<string>;
  /** A back-channel logout token signed with the provider's key, or with another key (`forged`). */
  logoutToken(clientId: string, claims: { sub?: string; sid?: string; nonce?: string; events?: unknown; jti?: string; aud?: string }, options?: { forged?: boolean }): Promise<string>;
  /** Has oidc-provider itself send a back-channel logout to a client's registered backchannel_logout_uri. */
  backchannelLogout(clientId: string, sub: string, sid: string): Promise<void>;
  resetStats(): void;
  /** Token requests open right now (a hung one stays open until its client's socket closes). */
  inflightTokenRequests(): number;
  /** Releases requests held by a `hang` fault. */
  releaseHangs(): void;
  /** Forgets a dynamically registered client, as a server that purges clients does: its requests get invalid_client. */
  forgetClient(clientId: string): Promise<void>;
  /** A registered client's metadata as the server keeps it (application_type, redirect_uris, …). */
  clientMetadata(clientId: string): Promise<Record<string, unknown> | undefined>;
  close(): Promise<void>;
}

const SETUP_HEADER = "x-test-setup";

/**
 * A real oidc-provider on an ephemeral port with refresh-token rotation: a
 * reused refresh token revokes the whole grant, as real providers do.
 */
export async function startTestProvider(
  options: {
    accessTokenTtl?: number;
    /** Where to listen (default 127.0.0.1, port 0). */
    host?: string;
    port?: number;
    /** Serve HTTPS with this certificate (for a provider reached by a non-loopback name). */
    tls?: { cert: Buffer; key: Buffer };
    /** Host name in the issuer URL, when clients reach the provider by another name. */
    publicHost?: string;
    /** Fixed client credentials (default: client id token-service, a random secret). */
    clientId?: string;
    clientSecret?: string;
    /** Scopes it knows besides openid and offline_access (e.g. profile). */
    extraScopes?: string[];
    /** Dynamic registration (RFC 7591) on; default true. */
    registration?: boolean;
    /** A client that registers again with the same client_name and redirect URIs gets the same client_id (as servers that derive it do). */
    stableClientIds?: boolean;
    /** Client ID metadata documents: URL client ids are resolved, their documents fetched with this fetch. */
    clientIdMetadataDocument?: { fetch: (url: string, init: RequestInit) => Promise<Response> };
    /** false: its metadata leaves code_challenge_methods_supported out (PKCE is still required). */
    advertisePkce?: boolean;
    /** Scopes its resource servers know besides mcp:tools (granted on a resource when asked for, e.g. mcp:admin). */
    resourceScopes?: string[];
    /** ID token lifetime in seconds (default 3600). */
    idTokenTtl?: number;
    /** Extra fields of its discovery document (e.g. authorization_grant_profiles_supported). */
    discovery?: Record<string, unknown>;
    /** Grant types the main client may use besides code, refresh and token exchange. */
    grantTypes?: string[];
    /**
     * Lifetime of each refresh token issued, in seconds (default 86400). With rotation every refresh issues
     * a new one, so this is an idle timeout: a session not refreshed for this long is dead.
     */
    refreshTokenTtl?: number;
    /** Token responses that carry a refresh token state its lifetime as `refresh_token_expires_in` (as GitHub and Entra do). */
    reportRefreshTokenExpiry?: boolean;
    /** Registers further grants (or replaces the token exchange) on the provider; `signingKey` is its RS256 key (kid "test"). */
    configure?: (provider: Provider, signingKey: KeyObject) => void;
  } = {},
): Promise<TestProvider> {
  let accessTtl = options.accessTokenTtl ?? 300;
  const server = options.tls ? https.createServer({ cert: options.tls.cert, key: options.tls.key }) : http.createServer();
  server.listen(options.port ?? 0, options.host ?? "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as AddressInfo).port;
  const issuer = `${options.tls ? "https" : "http"}://${options.publicHost ?? options.host ?? "127.0.0.1"}:${port}`;
  const clientId = options.clientId ?? "token-service";
  const clientSecret = options.clientSecret ?? randomBytes(24).toString("base64url");
  const { privateKey } = generateKeyPairSync("rsa", { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: "jwk" }), kid: "test", alg: "RS256", use: "sig" };

  const options_ = options;
  const redirectUri = "https://gateway.example.test/oauth/callback";
  const resourceScopes = options.resourceScopes ?? [];
  const resourceScope = ["mcp:tools", ...resourceScopes].join(" ");
  const publicClientId = "token-service-public";
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ["authorization_code", "refresh_token", TOKEN_EXCHANGE, ...(options.grantTypes ?? [])],
        response_types: ["code"],
        redirect_uris: ["https://rp.example.test/cb", redirectUri],
        token_endpoint_auth_method: "client_secret_basic",
      },
      {
        client_id: publicClientId,
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        redirect_uris: [redirectUri],
        token_endpoint_auth_method: "none",
      },
    ],
    // The login and consent pages: a test drives them with plain HTTP (see authorize()).
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    // Its outgoing calls (back-channel logout, documents) go to services on loopback here: drop its SSRF guard, which refuses them.
    fetch: (url: string | URL | Request, options?: RequestInit) => {
      const { dispatcher: _dispatcher, ...rest } = (options ?? {}) as RequestInit & { dispatcher?: unknown };
      return options_.clientIdMetadataDocument ? options_.clientIdMetadataDocument.fetch(String(url), rest) : fetch(url, rest);
    },
    // A refresh token for every code grant of a client that may refresh (offline_access would need prompt=consent).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed("refresh_token"),
    jwks: { keys: [jwk as never] },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    rotateRefreshToken: true,
    ...(options.discovery ? { discovery: options.discovery } : {}),
    scopes: ["openid", "offline_access", ...(options.extraScopes ?? [])],
    ttl: {
      AccessToken: () => accessTtl,
      IdToken: options.idTokenTtl ?? 3600,
      RefreshToken: options.refreshTokenTtl ?? 86_400,
      Grant: 86_400,
      Interaction: 600,
      Session: 86_400,
      AuthorizationCode: 60,
    },
    features: {
      devInteractions: { enabled: false },
      // Any authenticated client may revoke its own tokens (what a token service needs).
      revocation: { enabled: true, allowedPolicy: async () => true },
      introspection: { enabled: true },
      registration: {
        enabled: options.registration ?? true,
        ...(options.stableClientIds
          ? { idFactory: (ctx: { oidc: { body?: Record<string, unknown> } }) => `dcr-${createHash("sha256").update(JSON.stringify([ctx.oidc.body?.client_name, ctx.oidc.body?.redirect_uris])).digest("hex").slice(0, 16)}` }
          : {}),
      },
      clientIdMetadataDocument: { enabled: options.clientIdMetadataDocument !== undefined, ack: "draft-02" },
      backchannelLogout: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // Any http(s) resource is a resource server here; its access tokens are JWTs (RFC 9068) for that audience.
        getResourceServerInfo: async (_ctx, resource) => ({
          scope: resourceScope,
          audience: resource,
          accessTokenFormat: "jwt",
          accessTokenTTL: accessTtl,
          jwt: { sign: { alg: "RS256" } },
        }),
        // A token request without `resource` gets an opaque token, not one for the granted resource: a client must ask.
        useGrantedResource: async () => false,
      },
    },
  });

  const stats: ProviderStats = {
    refreshes: 0,
    maxConcurrentRefreshes: 0,
    invalidGrants: 0,
    revocations: 0,
    discoveries: 0,
    refreshMs: [],
    refreshArrivedAt: [],
    tokenRequests: [],
    assertionKids: [],
    registrations: 0,
  };
  const refusedExchangeTargets = new Set<string>();
  const resourceServer = (target: string) =>
    new provider.ResourceServer(target, { scope: "mcp:tools", audience: target, accessTokenFormat: "jwt", accessTokenTTL: accessTtl, jwt: { sign: { alg: "RS256" } } });

  // RFC 8693 token exchange: an access token of this provider, for a JWT access token whose aud is the
  // target (`resource`, else `audience`). Any http(s) target is a resource server here, except refused ones.
  provider.registerGrantType(
    TOKEN_EXCHANGE,
    async (ctx) => {
      const params = ctx.oidc.params as Record<string, string | undefined>;
      if (params.subject_token_type !== ACCESS_TOKEN_TYPE) throw new errors.InvalidRequest("subject_token_type must be an access token");
      const subject = await provider.AccessToken.find(params.subject_token ?? "");
      if (!subject || subject.clientId !== ctx.oidc.client!.clientId) throw new errors.InvalidGrant("subject token is not valid");
      const target = params.resource ?? params.audience;
      if (!target || !/^https?:\/\//.test(target) || refusedExchangeTargets.has(target)) throw new errors.InvalidTarget();
      const at = new provider.AccessToken({
        accountId: subject.accountId,
        client: ctx.oidc.client,
        grantId: subject.grantId,
        gty: "token_exchange",
        scope: "mcp:tools",
      });
      at.resourceServer = resourceServer(target);
      const value = await at.save();
      ctx.body = { access_token: value, issued_token_type: ACCESS_TOKEN_TYPE, token_type: "Bearer", expires_in: at.expiration, scope: at.scope };
    },
    ["subject_token", "subject_token_type", "requested_token_type", "audience", "resource", "scope"],
  );
  options.configure?.(provider, privateKey);
  const faults: TokenFault[] = [];
  const revocationFaults: TokenFault[] = [];
  let inflight = 0;
  const hangs = new Set<() => void>();

  /** Applies a fault; returns true when the request must not be processed further. */
  const applyFault = async (ctx: Parameters<Parameters<typeof provider.use>[0]>[0], fault: TokenFault | undefined) => {
    if (fault?.kind === "status") {
      ctx.status = fault.status;
      if (fault.retryAfter) ctx.set("retry-after", fault.retryAfter);
      for (const [k, v] of Object.entries(fault.headers ?? {})) ctx.set(k, v);
      ctx.body = fault.body ?? "upstream failure";
      return true;
    }
    if (fault?.kind === "hang") {
      const gone = await new Promise<boolean>((resolve) => {
        const release = () => resolve(false);
        hangs.add(release);
        ctx.res.once("close", () => resolve(!ctx.res.writableEnded));
        if (fault.ms) setTimeout(release, fault.ms);
      });
      return gone; // the client went away: never process, as if the request was lost
    }
    if (fault?.kind === "delay") await sleep(fault.ms);
    return false;
  };

  if (options.reportRefreshTokenExpiry) {
    provider.use(async (ctx, next) => {
      await next();
      const body = ctx.path === "/token" ? (ctx.body as Record<string, unknown> | undefined) : undefined;
      if (body && typeof body.refresh_token === "string") body.refresh_token_expires_in = options.refreshTokenTtl ?? 86_400;
    });
  }

  provider.use(async (ctx, next) => {
    // RFC 8414 authorization server metadata: the same document as OpenID Connect discovery.
    if (ctx.path === "/.well-known/oauth-authorization-server") ctx.path = "/.well-known/openid-configuration";
    const setup = ctx.get(SETUP_HEADER) === "1";
    if (ctx.path === "/reg" && ctx.method === "POST") stats.registrations++;
    if (ctx.path === "/.well-known/openid-configuration") {
      stats.discoveries++;
      if (options.advertisePkce === false) {
        await next();
        delete (ctx.body as Record<string, unknown>).code_challenge_methods_supported;
        return;
      }
    }
    if (ctx.path === "/token/revocation" && !setup) {
      stats.revocations++;
      if (await applyFault(ctx, revocationFaults.shift())) return;
      return next();
    }
    if (ctx.path !== "/token" || ctx.method !== "POST" || setup) return next();

    stats.refreshes++;
    inflight++;
    stats.maxConcurrentRefreshes = Math.max(stats.maxConcurrentRefreshes, inflight);
    const started = performance.now();
    stats.refreshArrivedAt.push(performance.timeOrigin + started);
    let recorded = false;
    /** The parameters as oidc-provider parsed them (none when a fault answered first), once the request is processed. */
    const record = () => {
      const params = (ctx.oidc as { params?: Record<string, unknown> } | undefined)?.params;
      if (recorded || !params) return;
      recorded = true;
      if (typeof params.client_assertion === "string") stats.assertionKids.push(String(decodeProtectedHeader(params.client_assertion).kid));
      const list = (v: unknown) => (v === undefined ? [] : [v].flat().map(String));
      stats.tokenRequests.push({
        grantType: String(params.grant_type),
        resource: list(params.resource),
        audience: list(params.audience),
        scope: typeof params.scope === "string" ? params.scope : undefined,
      });
    };
    try {
      const fault = faults.shift();
      if (await applyFault(ctx, fault)) return;
      await next();
      record();
      if (fault?.kind === "slow_answer") await sleep(fault.ms);
      if (ctx.status === 400 && (ctx.body as { error?: string } | undefined)?.error === "invalid_grant") {
        stats.invalidGrants++;
      }
    } finally {
      inflight--;
      stats.refreshMs.push(performance.now() - started);
      record();
    }
  });

  const callback = provider.callback();
  server.on("request", (req, res) => {
    const m = /^\/interaction\/([^/?]+)/.exec(req.url ?? "");
    if (!m) return callback(req, res);
    void interaction(req, res).catch((err: unknown) => {
      res.statusCode = 500;
      res.end(String(err));
    });
  });

  /** Login and consent in one step: the account comes in the query (?account=…), or the user refuses (?deny=1). */
  async function interaction(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const query = new URL(req.url ?? "/", issuer).searchParams;
    const details = await provider.interactionDetails(req, res);
    if (query.get("deny") === "1") {
      await provider.interactionFinished(req, res, { error: "access_denied", error_description: "the user said no" }, { mergeWithLastSubmission: false });
      return;
    }
    const accountId = query.get("account") ?? "anonymous";
    const params = details.params as Record<string, string | string[] | undefined>;
    const grant = new provider.Grant({ accountId, clientId: String(params.client_id) });
    const requested = String(params.scope ?? "openid").split(" ");
    const ticked = query.get("grant_scope")?.split(" ");
    const oidcScopes = requested.filter((s) => !resourceScopes.includes(s));
    grant.addOIDCScope((ticked ? oidcScopes.filter((s) => ticked.includes(s)) : oidcScopes).join(" "));
    // Unticked scopes are refused for good, so the provider does not ask for consent again.
    const unticked = ticked ? requested.filter((s) => !ticked.includes(s)) : [];
    if (unticked.length) grant.rejectOIDCScope(unticked.join(" "));
    const onResource = ["mcp:tools", ...requested.filter((s) => resourceScopes.includes(s) && (!ticked || ticked.includes(s)))].join(" ");
    for (const r of [params.resource ?? []].flat()) grant.addResourceScope(r, onResource);
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { login: { accountId }, consent: { grantId } }, { mergeWithLastSubmission: false });
  }

  /** GET without following redirects, keeping cookies in `jar`; returns the Location. */
  async function step(url: string, jar: Map<string, string>): Promise<string> {
    const res = await fetch(url, { redirect: "manual", headers: { cookie: [...jar].map(([k, v]) => `${k}=${v}`).join("; ") } });
    for (const c of res.headers.getSetCookie()) {
      const [pair] = c.split(";");
      const eq = pair!.indexOf("=");
      jar.set(pair!.slice(0, eq), pair!.slice(eq + 1));
    }
    await res.body?.cancel();
    const location = res.headers.get("location");
    if (res.status < 300 || res.status >= 400 || !location) throw new Error(`expected a redirect from ${new URL(url).pathname}, got ${res.status}`);
    return new URL(location, url).href;
  }

  const basic = `Basic ${Buffer.from(`${encodeURIComponent(clientId)}:${encodeURIComponent(clientSecret)}`).toString("base64")}`;
  const post = async (path: string, form: Record<string, string>) => {
    const res = await fetch(`${issuer}${path}`, {
      method: "POST",
      headers: { authorization: basic, "content-type": "application/x-www-form-urlencoded", [SETUP_HEADER]: "1" },
      body: new URLSearchParams(form),
    });
    return { status: res.status, body: (await res.json().catch(() => ({}))) as Record<string, unknown> };
  };

  return {
    issuer,
    clientId,
    clientSecret,
    stats,
    faults,
    revocationFaults,
    refusedExchangeTargets,
    setAccessTokenTtl(seconds) {
      accessTtl = seconds;
    },
    async login(accountId, loginOptions = {}) {
      const client = await provider.Client.find(clientId);
      if (!client) throw new Error("test client missing");
      const grant = new provider.Grant({ accountId, clientId });
      const scope = loginOptions.scope ?? "openid offline_access";
      grant.addOIDCScope(scope);
      const resources = loginOptions.resources ?? [];
      for (const r of resources) grant.addResourceScope(r, "mcp:tools");
      const grantId = await grant.save();
      const rt = new provider.RefreshToken({
        accountId,
        client,
        grantId,
        scope: resources.length ? `${scope} mcp:tools` : scope,
        gty: "authorization_code",
        authTime: Math.floor(Date.now() / 1000),
        ...(resources.length ? { resource: resources.length === 1 ? resources[0] : resources } : {}),
      });
      const seed = await rt.save();
      // Trade the seed for a complete token set from the real token endpoint.
      const { status, body } = await post("/token", { grant_type: "refresh_token", refresh_token: seed });
      if (status !== 200) throw new Error(`test login failed: ${status} ${JSON.stringify(body)}`);
      return body as unknown as TestTokenSet;
    },
    redirectUri,
    publicClientId,
    async authorize(authorizationUrl, accountId, options = {}) {
      const jar = new Map<string, string>();
      let url = await step(authorizationUrl, jar);
      for (let hops = 0; hops < 6 && url.startsWith(issuer); hops++) {
        if (new URL(url).pathname.startsWith("/interaction/")) {
          const u = new URL(url);
          u.searchParams.set(options.deny ? "deny" : "account", options.deny ? "1" : accountId);
          if (options.grantScopes) u.searchParams.set("grant_scope", options.grantScopes.join(" "));
          url = u.href;
        }
        url = await step(url, jar);
      }
      if (url.startsWith(issuer)) throw new Error("the provider did not send the browser back");
      return url;
    },
    async logoutToken(audience, claims, options = {}) {
      const key = options.forged ? generateKeyPairSync("rsa", { modulusLength: 2048 }).privateKey : privateKey;
      const { nonce, events, jti, aud, ...rest } = claims;
      return new SignJWT({
        ...rest,
        ...(nonce ? { nonce } : {}),
        events: events === undefined ? { "http://schemas.openid.net/event/backchannel-logout": {} } : events,
        jti: jti ?? randomBytes(12).toString("hex"),
      })
        .setProtectedHeader({ alg: "RS256", kid: "test", typ: "logout+jwt" })
        .setIssuer(issuer)
        .setAudience(aud ?? audience)
        .setIssuedAt()
        .setExpirationTime("2m")
        .sign(key);
    },
    async backchannelLogout(client, sub, sid) {
      const found = await provider.Client.find(client);
      if (!found) throw new Error(`no client ${client}`);
      await (found as unknown as { backchannelLogout(sub: string, sid: string): Promise<void> }).backchannelLogout(sub, sid);
    },
    configEntry(id = "corp") {
      return { id, issuer, client_id: clientId, client_secret: clientSecret, allow_insecure_http: true };
    },
    async userinfo(accessToken) {
      const res = await fetch(`${issuer}/me`, { headers: { authorization: `Bearer ${accessToken}`, [SETUP_HEADER]: "1" } });
      await res.body?.cancel();
      return res.status;
    },
    redeem(refreshToken) {
      return post("/token", { grant_type: "refresh_token", refresh_token: refreshToken });
    },
    async introspect(token) {
      const { body } = await post("/token/introspection", { token });
      return { active: body.active === true };
    },
    inflightTokenRequests: () => inflight,
    resetStats() {
      Object.assign(stats, {
        refreshes: 0,
        maxConcurrentRefreshes: 0,
        invalidGrants: 0,
        revocations: 0,
        discoveries: 0,
        refreshMs: [],
        refreshArrivedAt: [],
        tokenRequests: [],
        assertionKids: [],
        registrations: 0,
      });
    },
    releaseHangs() {
      for (const release of hangs) release();
      hangs.clear();
    },
    async clientMetadata(id) {
      return (await provider.Client.find(id))?.metadata() as Record<string, unknown> | undefined;
    },
    async forgetClient(id) {
      await (provider.Client as unknown as { adapter: { destroy(id: string): Promise<void> } }).adapter.destroy(id);
    },
    async close() {
      for (const release of hangs) release();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
