import { generateKeyPairSync, randomBytes } from "node:crypto";
import { once } from "node:events";
import http from "node:http";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import Provider from "oidc-provider";

/** A token endpoint fault to inject into the next token requests. */
export type TokenFault =
  | { kind: "status"; status: number; retryAfter?: string; body?: string; headers?: Record<string, string> }
  /** Hangs until the client disconnects (the request is then never processed) or `ms` pass. */
  | { kind: "hang"; ms?: number }
  /** Waits, then processes the request normally. */
  | { kind: "delay"; ms: number };

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
  /** Logs a user in: returns a full token set from a real token endpoint response. */
  login(accountId: string): Promise<TestTokenSet>;
  /** Uses a refresh token directly at the token endpoint (not counted as a service refresh). */
  redeem(refreshToken: string): Promise<{ status: number; body: Record<string, unknown> }>;
  /** Provider-side view of a token (RFC 7662). */
  introspect(token: string): Promise<{ active: boolean }>;
  resetStats(): void;
  /** Releases requests held by a `hang` fault. */
  releaseHangs(): void;
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

  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        grant_types: ["authorization_code", "refresh_token"],
        response_types: ["code"],
        redirect_uris: ["https://rp.example.test/cb"],
        token_endpoint_auth_method: "client_secret_basic",
      },
    ],
    jwks: { keys: [jwk as never] },
    findAccount: async (_ctx, id) => ({ accountId: id, claims: async () => ({ sub: id }) }),
    rotateRefreshToken: true,
    scopes: ["openid", "offline_access"],
    ttl: {
      AccessToken: () => accessTtl,
      IdToken: 3600,
      RefreshToken: 86_400,
      Grant: 86_400,
    },
    features: {
      devInteractions: { enabled: false },
      // Any authenticated client may revoke its own tokens (what a token service needs).
      revocation: { enabled: true, allowedPolicy: async () => true },
      introspection: { enabled: true },
    },
  });

  const stats: ProviderStats = {
    refreshes: 0,
    maxConcurrentRefreshes: 0,
    invalidGrants: 0,
    revocations: 0,
    discoveries: 0,
    refreshMs: [],
  };
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

  provider.use(async (ctx, next) => {
    const setup = ctx.get(SETUP_HEADER) === "1";
    if (ctx.path === "/.well-known/openid-configuration") stats.discoveries++;
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
    try {
      if (await applyFault(ctx, faults.shift())) return;
      await next();
      if (ctx.status === 400 && (ctx.body as { error?: string } | undefined)?.error === "invalid_grant") {
        stats.invalidGrants++;
      }
    } finally {
      inflight--;
      stats.refreshMs.push(performance.now() - started);
    }
  });

  server.on("request", provider.callback());

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
    setAccessTokenTtl(seconds) {
      accessTtl = seconds;
    },
    async login(accountId) {
      const client = await provider.Client.find(clientId);
      if (!client) throw new Error("test client missing");
      const grant = new provider.Grant({ accountId, clientId });
      grant.addOIDCScope("openid offline_access");
      const grantId = await grant.save();
      const rt = new provider.RefreshToken({
        accountId,
        client,
        grantId,
        scope: "openid offline_access",
        gty: "authorization_code",
        authTime: Math.floor(Date.now() / 1000),
      });
      const seed = await rt.save();
      // Trade the seed for a complete token set from the real token endpoint.
      const { status, body } = await post("/token", { grant_type: "refresh_token", refresh_token: seed });
      if (status !== 200) throw new Error(`test login failed: ${status} ${JSON.stringify(body)}`);
      return body as unknown as TestTokenSet;
    },
    configEntry(id = "corp") {
      return { id, issuer, client_id: clientId, client_secret: clientSecret, allow_insecure_http: true };
    },
    redeem(refreshToken) {
      return post("/token", { grant_type: "refresh_token", refresh_token: refreshToken });
    },
    async introspect(token) {
      const { body } = await post("/token/introspection", { token });
      return { active: body.active === true };
    },
    resetStats() {
      Object.assign(stats, {
        refreshes: 0,
        maxConcurrentRefreshes: 0,
        invalidGrants: 0,
        revocations: 0,
        discoveries: 0,
        refreshMs: [],
      });
    },
    releaseHangs() {
      for (const release of hangs) release();
      hangs.clear();
    },
    async close() {
      for (const release of hangs) release();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
