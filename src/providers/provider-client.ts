import { createRemoteJWKSet, customFetch as joseFetch, type JWTVerifyGetKey } from "jose";
import * as oidc from "openid-client";
import type { ProviderConfig, RefreshConfig } from "../config.js";
import type { Logger } from "../logger.js";
import { classifyProviderError, ProviderError } from "./errors.js";
import { NO_TELEMETRY, observedFetch, type FetchLike, type ProviderTelemetry } from "./observed-fetch.js";
import { refreshScope } from "./refresh-scope.js";
import { withRetries } from "./retry.js";
import type { TraceContext } from "../tracing/spans.js";

export type { FetchLike } from "./observed-fetch.js";

/** After a failed discovery or JWKS fetch, a provider's metadata or keys are not fetched again for this long. */
export const FAILURE_COOLDOWN_MS = 30_000;

/** A token endpoint response, reduced to what a session keeps. */
export interface ProviderTokens {
  accessToken: string;
  refreshToken: string | undefined;
  idToken: string | undefined;
  tokenType: string;
  expiresIn: number | undefined;
  scope: string | undefined;
  /** Keycloak-style refresh_expires_in, when present. */
  refreshExpiresIn: number | undefined;
}

export interface CallOptions {
  /** Epoch ms by which the whole call, retries included, must be over. */
  deadline: number;
  signal?: AbortSignal;
  /** The traced call or refresh this request belongs to: its CLIENT spans go under it. */
  trace?: TraceContext;
}

/** What a refresh asks for besides the refresh token. */
export interface RefreshOptions extends CallOptions {
  /** RFC 8707: the one resource the session was granted, sent with the refresh. */
  resource?: string;
  /** The session's granted scope (space-separated): `refresh_scopes` are narrowed to it. */
  grantedScope?: string;
}

/** A token response of any grant, with RFC 8693's `issued_token_type` when sent. */
export interface GrantResponse extends ProviderTokens {
  issuedTokenType: string | undefined;
}

/** What a code exchange must check: the PKCE verifier sent, the state and nonce issued. */
export interface CodeChecks {
  codeVerifier: string;
  state: string;
  /** OpenID Connect providers: the nonce the ID token must carry. */
  nonce: string | undefined;
}

/** A code exchange's tokens, with who the ID token (validated) is about. */
export interface CodeGrantResult extends ProviderTokens {
  subject: string | undefined;
  sid: string | undefined;
}

/** Refresh, revocation and the authorization code flow at one provider. */
export interface ProviderClient {
  readonly id: string;
  readonly config: ProviderConfig;
  /** Discovery (cached after the first success). */
  metadata(options: CallOptions): Promise<oidc.ServerMetadata>;
  /** Discovery now, ahead of the first call; resolves false (logged, not remembered) when it fails. */
  prefetch?(signal: AbortSignal): Promise<boolean>;
  refresh(refreshToken: string, options: RefreshOptions): Promise<ProviderTokens>;
  /** RFC 7009 revocation; false when the provider has no revocation endpoint. */
  revoke(token: string, hint: "refresh_token" | "access_token", options: CallOptions): Promise<boolean>;
  /**
   * RFC 8693 token exchange: the session's access token as the subject token,
   * for an access token whose target is `resource` (sent as `resource`,
   * `audience` or both).
   */
  exchange(subjectToken: string, target: { resource: string; send: "resource" | "audience" | "both" }, options: CallOptions): Promise<ProviderTokens>;
  /**
   * A token request of another grant type (RFC 8693 for an ID-JAG, RFC 7523's
   * JWT bearer grant), with this provider's client authentication and retries.
   */
  grant(grantType: string, params: Record<string, string>, options: CallOptions): Promise<GrantResponse>;
  /** The authorization request URL with these parameters (client_id and response_type=code added). */
  authorizationUrl(params: Record<string, string>, options: CallOptions): Promise<URL>;
  /**
   * Exchanges the code in `callbackUrl` (one attempt: a code is used once),
   * checking state, `iss` (RFC 9207) and, for OpenID Connect, the ID token.
   */
  exchangeCode(callbackUrl: URL, checks: CodeChecks, resource: string | undefined, options: CallOptions): Promise<CodeGrantResult>;
  /** The provider's signing keys (its jwks_uri), for logout tokens; cached and refetched on an unknown kid. */
  signingKeys(options: CallOptions): Promise<JWTVerifyGetKey>;
}

function clientAuth(config: ProviderConfig): oidc.ClientAuth {
  switch (config.clientAuthMethod) {
    case "client_secret_post":
      return oidc.ClientSecretPost(config.clientSecret);
    case "none":
      return oidc.None();
    case "private_key_jwt":
      if (!config.assertionKey) throw new ProviderError("unavailable", "no_signing_key");
      return oidc.PrivateKeyJwt(config.assertionKey());
    default:
      return oidc.ClientSecretBasic(config.clientSecret);
  }
}

function numberOrUndefined(v: unknown): number | undefined {
  return typeof v === "number" && Number.isFinite(v) ? v : undefined;
}

function fromResponseBody(body: Record<string, unknown>): ProviderTokens | undefined {
  if (typeof body.access_token !== "string" || body.access_token === "") return undefined;
  return {
    accessToken: body.access_token,
    refreshToken: typeof body.refresh_token === "string" && body.refresh_token !== "" ? body.refresh_token : undefined,
    idToken: typeof body.id_token === "string" && body.id_token !== "" ? body.id_token : undefined,
    tokenType: typeof body.token_type === "string" && body.token_type !== "" ? body.token_type : "Bearer",
    expiresIn: numberOrUndefined(body.expires_in),
    scope: typeof body.scope === "string" ? body.scope : undefined,
    // Keycloak's name, and the one GitHub and Entra use.
    refreshExpiresIn: numberOrUndefined(body.refresh_expires_in ?? body.refresh_token_expires_in),
  };
}

/**
 * openid-client adapter for one configured provider. Discovery runs once and
 * is cached; each call builds a light Configuration from the cached metadata
 * so it can carry its own abort signal.
 */
export class OidcProviderClient implements ProviderClient {
  private discovered: Promise<oidc.ServerMetadata> | undefined;
  private jwks: Promise<JWTVerifyGetKey> | undefined;
  /** The last discovery failure and when it happened: answered again, without a request, during the cooldown. */
  private discoveryFailure: { at: number; error: ProviderError } | undefined;
  private jwksFailedAt = -Infinity;

  constructor(
    readonly config: ProviderConfig,
    private readonly refreshConfig: RefreshConfig,
    private readonly logger: Logger,
    private readonly fetchImpl: FetchLike = fetch,
    /** Spans and the latency metric of every request to this provider. */
    private readonly telemetry: ProviderTelemetry = NO_TELEMETRY,
    private readonly cooldownMs: number = FAILURE_COOLDOWN_MS,
  ) {}

  get id(): string {
    return this.config.id;
  }

  metadata(options: CallOptions): Promise<oidc.ServerMetadata> {
    const given = this.givenMetadata();
    if (given) return Promise.resolve(given);
    const failure = this.discoveryFailure;
    if (!this.discovered && failure && performance.now() - failure.at < this.cooldownMs) return Promise.reject(failure.error);
    return this.discover(options, true);
  }

  /**
   * Discovery ahead of the first call that needs it (start-up, and the new clients of a reload), so that the first
   * refresh neither waits for the metadata nor is the first HTTP request of the process (loading and compiling
   * the HTTP client's code costs that request about 30 ms of CPU; docs/performance.md). A failure is logged but
   * not remembered: the first call tries again at once instead of being refused for the cooldown. True once the
   * metadata is there (or needs no request).
   */
  async prefetch(signal: AbortSignal): Promise<boolean> {
    if (this.givenMetadata()) return true;
    try {
      await this.discover({ deadline: Date.now() + this.refreshConfig.providerTimeoutMs, signal }, false);
      return true;
    } catch {
      return false;
    }
  }

  /** The metadata the configuration gives, if it gives it (no discovery then). */
  private givenMetadata(): oidc.ServerMetadata | undefined {
    if (this.config.metadata) return this.config.metadata as unknown as oidc.ServerMetadata;
    if (this.config.tokenEndpoint) {
      return {
        issuer: this.config.issuer,
        token_endpoint: this.config.tokenEndpoint,
        revocation_endpoint: this.config.revocationEndpoint,
      };
    }
    return undefined;
  }

  /** The discovery in flight or done, else a new one; `remember`: a failure starts the cooldown. */
  private discover(options: CallOptions, remember: boolean): Promise<oidc.ServerMetadata> {
    if (!this.discovered) {
      const started = Date.now();
      this.discovered = withRetries(
        async ({ signal }) => {
          const config = await oidc.discovery(new URL(this.config.issuer), this.config.clientId, undefined, undefined, {
            execute: this.config.allowInsecureHttp ? [oidc.allowInsecureRequests] : [],
            [oidc.customFetch]: this.fetchWith(signal, "discovery", options.trace),
            timeout: this.refreshConfig.providerTimeoutMs / 1000,
          });
          return { ...config.serverMetadata() };
        },
        this.retryPolicy(),
        options.deadline,
        options.signal,
      ).then(
        (metadata) => {
          this.logger.info({ provider: this.id, ms: Date.now() - started, ...(remember ? {} : { ahead: true }) }, "provider discovery done");
          return metadata;
        },
        (err: unknown) => {
          this.discovered = undefined; // try again (after the cooldown, when remembered)
          const e = classifyProviderError(err);
          const error = new ProviderError("unavailable", `discovery_${e.code}`, { status: e.options.status, cause: e });
          // Cut off by the service's shutdown: not the provider's failure.
          if (options.signal?.aborted && !remember) throw error;
          this.logger.warn(
            { provider: this.id, code: e.code, status: e.options.status, ...(remember ? { cooldownMs: this.cooldownMs } : { ahead: true }) },
            "provider discovery failed",
          );
          if (remember) this.discoveryFailure = { at: performance.now(), error };
          throw error;
        },
      );
    }
    return this.discovered;
  }

  /**
   * A refresh token grant. No `scope` is sent unless the provider has
   * `refresh_scopes` (see refreshScope); a scoped refresh answered
   * `invalid_scope` is tried once more without it.
   */
  async refresh(refreshToken: string, options: RefreshOptions): Promise<ProviderTokens> {
    const metadata = await this.metadata(options);
    const scope = refreshScope(this.config.refreshScopes, options.grantedScope);
    const params: Record<string, string> = {};
    if (options.resource) params.resource = options.resource;
    if (scope === undefined) return this.refreshGrant(metadata, refreshToken, params, options);
    try {
      return await this.refreshGrant(metadata, refreshToken, { ...params, scope }, options);
    } catch (err) {
      if (!(err instanceof ProviderError) || err.code !== "invalid_scope") throw err;
      this.logger.warn({ provider: this.id, scope }, "provider refused the refresh_scopes (invalid_scope); refreshing once more without scope");
      return this.refreshGrant(metadata, refreshToken, params, options);
    }
  }

  private refreshGrant(metadata: oidc.ServerMetadata, refreshToken: string, params: Record<string, string>, options: RefreshOptions): Promise<ProviderTokens> {
    return withRetries(
      async ({ signal }) => {
        const seen: { body?: Record<string, unknown> } = {};
        const config = this.configuration(metadata, signal, options.trace, seen);
        try {
          const response = await oidc.refreshTokenGrant(config, refreshToken, params);
          const tokens = fromResponseBody(response as unknown as Record<string, unknown>);
          if (!tokens) throw new ProviderError("unavailable", "bad_response");
          return tokens;
        } catch (err) {
          const salvaged = seen.body ? fromResponseBody(seen.body) : undefined;
          if (salvaged && !(err instanceof ProviderError)) {
            // The provider answered 200 with tokens but the response failed
            // openid-client's checks (for example id_token claims). The old
            // refresh token may be spent already, so keep the new one rather
            // than lose the session; drop the unverified id_token.
            this.logger.warn(
              { provider: this.id, code: classifyProviderError(err).code },
              "refresh response failed validation; keeping the new tokens without its id_token",
            );
            return { ...salvaged, idToken: undefined };
          }
          throw err;
        }
      },
      this.retryPolicy(),
      options.deadline,
      options.signal,
      (err, delayMs, attempt) =>
        this.logger.info({ provider: this.id, code: err.code, attempt, delayMs: Math.round(delayMs) }, "refresh retry"),
    );
  }

  async revoke(token: string, hint: "refresh_token" | "access_token", options: CallOptions): Promise<boolean> {
    const metadata = await this.metadata(options);
    if (!metadata.revocation_endpoint) return false;
    await withRetries(
      ({ signal }) => oidc.tokenRevocation(this.configuration(metadata, signal, options.trace, undefined, "revocation"), token, { token_type_hint: hint }),
      this.retryPolicy(),
      options.deadline,
      options.signal,
    );
    return true;
  }

  exchange(subjectToken: string, target: { resource: string; send: "resource" | "audience" | "both" }, options: CallOptions): Promise<ProviderTokens> {
    const params: Record<string, string> = {
      subject_token: subjectToken,
      subject_token_type: "urn:ietf:params:oauth:token-type:access_token",
      requested_token_type: "urn:ietf:params:oauth:token-type:access_token",
    };
    if (target.send !== "audience") params.resource = target.resource;
    if (target.send !== "resource") params.audience = target.resource;
    return this.grant("urn:ietf:params:oauth:grant-type:token-exchange", params, options);
  }

  async grant(grantType: string, params: Record<string, string>, options: CallOptions): Promise<GrantResponse> {
    const metadata = await this.metadata(options);
    return withRetries(
      async ({ signal }) => {
        const response = (await oidc.genericGrantRequest(this.configuration(metadata, signal, options.trace), grantType, params)) as unknown as Record<string, unknown>;
        const tokens = fromResponseBody(response);
        if (!tokens) throw new ProviderError("unavailable", "bad_response");
        return { ...tokens, issuedTokenType: typeof response.issued_token_type === "string" ? response.issued_token_type : undefined };
      },
      this.retryPolicy(),
      options.deadline,
      options.signal,
      (err, delayMs, attempt) => this.logger.info({ provider: this.id, grant: grantType, code: err.code, attempt, delayMs: Math.round(delayMs) }, "token request retry"),
    );
  }

  async authorizationUrl(params: Record<string, string>, options: CallOptions): Promise<URL> {
    const metadata = await this.metadata(options);
    if (!metadata.authorization_endpoint) throw new ProviderError("unavailable", "no_authorization_endpoint");
    return oidc.buildAuthorizationUrl(this.configuration(metadata, AbortSignal.timeout(this.refreshConfig.providerTimeoutMs), undefined), params);
  }

  async exchangeCode(callbackUrl: URL, checks: CodeChecks, resource: string | undefined, options: CallOptions): Promise<CodeGrantResult> {
    const metadata = await this.metadata(options);
    const remaining = Math.max(1, Math.floor(Math.min(options.deadline - Date.now(), this.refreshConfig.providerTimeoutMs)));
    const signals = [AbortSignal.timeout(remaining), ...(options.signal ? [options.signal] : [])];
    const config = this.configuration(metadata, signals.length === 1 ? signals[0]! : AbortSignal.any(signals), options.trace);
    const response = await oidc.authorizationCodeGrant(
      config,
      callbackUrl,
      {
        pkceCodeVerifier: checks.codeVerifier,
        expectedState: checks.state,
        ...(checks.nonce !== undefined ? { expectedNonce: checks.nonce, idTokenExpected: true } : {}),
      },
      resource ? { resource } : undefined,
    );
    const tokens = fromResponseBody(response as unknown as Record<string, unknown>);
    if (!tokens) throw new ProviderError("unavailable", "bad_response");
    const claims = response.claims();
    const str = (v: unknown) => (typeof v === "string" && v !== "" ? v : undefined);
    return { ...tokens, subject: str(claims?.sub), sid: str(claims?.sid) };
  }

  signingKeys(options: CallOptions): Promise<JWTVerifyGetKey> {
    this.jwks ??= this.metadata(options).then((metadata) => {
      if (!metadata.jwks_uri) throw new ProviderError("unavailable", "no_jwks_uri");
      return createRemoteJWKSet(new URL(metadata.jwks_uri), {
        timeoutDuration: this.refreshConfig.providerTimeoutMs,
        [joseFetch]: this.jwksFetch(),
      });
    });
    this.jwks.catch(() => (this.jwks = undefined));
    return this.jwks;
  }

  /** The JWKS fetch, refused without a request for a cooldown after a failure (a network error or a status other than 200). */
  private jwksFetch(): FetchLike {
    const observed = observedFetch(this.fetchImpl, this.telemetry, this.id, "jwks");
    return async (url, init) => {
      if (performance.now() - this.jwksFailedAt < this.cooldownMs) throw new ProviderError("unavailable", "jwks_cooldown");
      let response: Response;
      try {
        response = await observed(url, init);
      } catch (err) {
        this.jwksFailedAt = performance.now();
        this.logger.warn({ provider: this.id, code: classifyProviderError(err).code, cooldownMs: this.cooldownMs }, "provider JWKS fetch failed");
        throw err;
      }
      if (response.status === 200) return response;
      // Not the logout token's fault: reported as the provider being unavailable, not as a bad token.
      await response.body?.cancel().catch(() => undefined);
      this.jwksFailedAt = performance.now();
      this.logger.warn({ provider: this.id, status: response.status, cooldownMs: this.cooldownMs }, "provider JWKS fetch failed");
      throw new ProviderError("unavailable", `jwks_http_${response.status}`, { status: response.status });
    };
  }

  private retryPolicy() {
    return {
      maxAttempts: this.refreshConfig.maxAttempts,
      baseDelayMs: this.refreshConfig.retryBaseDelayMs,
      attemptTimeoutMs: this.refreshConfig.providerTimeoutMs,
    };
  }

  private configuration(
    metadata: oidc.ServerMetadata,
    signal: AbortSignal,
    trace: TraceContext,
    seen?: { body?: Record<string, unknown> },
    endpoint = "token",
  ): oidc.Configuration {
    const config = new oidc.Configuration(
      metadata,
      this.config.clientId,
      this.config.clientSecret,
      clientAuth(this.config),
    );
    if (this.config.allowInsecureHttp) oidc.allowInsecureRequests(config);
    // No timeout signal of openid-client's own: every request carries `signal` (fetchWith), which already has the
    // attempt's timeout, so one AbortSignal.timeout and one AbortSignal.any fewer per request (on Node 20 every
    // AbortSignal is made transferable, about 10 µs each).
    config.timeout = 0;
    config[oidc.customFetch] = this.fetchWith(signal, endpoint, trace, seen);
    return config;
  }

  /** fetch bound to a call's signal, observed as a request to `endpoint`; optionally keeps a copy of a 200 JSON body. */
  private fetchWith(signal: AbortSignal, endpoint: string, trace: TraceContext, seen?: { body?: Record<string, unknown> }): oidc.CustomFetch {
    const observed = observedFetch(this.fetchImpl, this.telemetry, this.id, endpoint, trace);
    return async (url, init) => {
      const combined = init.signal ? AbortSignal.any([init.signal, signal]) : signal;
      const response = await observed(url, { ...init, signal: combined } as RequestInit);
      if (seen && response.status === 200) {
        try {
          const body: unknown = await response.clone().json();
          if (body && typeof body === "object") seen.body = body as Record<string, unknown>;
        } catch {
          // Not JSON: openid-client reports it.
        }
      }
      return response;
    };
  }
}

/**
 * The providers by id: those of the YAML file, replaced as a whole when the
 * file is reloaded, and those registered at run time, replaced as a whole
 * whenever the database says they changed.
 */
export class ProviderRegistry {
  private configured: Map<string, ProviderClient>;
  private runtime = new Map<string, ProviderClient>();
  private reregistration: ((stale: ProviderClient) => Promise<ProviderClient | undefined>) | undefined;

  constructor(clients: ProviderClient[]) {
    this.configured = new Map(clients.map((c) => [c.id, c]));
  }

  get(id: string): ProviderClient | undefined {
    return this.configured.get(id) ?? this.runtime.get(id);
  }

  /** Every provider id, YAML ones first. */
  ids(): string[] {
    return [...this.configured.keys(), ...this.runtime.keys()];
  }

  /** Whether the id belongs to a provider of the YAML file. */
  isConfigured(id: string): boolean {
    return this.configured.has(id);
  }

  /**
   * The YAML file's providers now (a configuration reload). Calls holding a
   * client from before finish with it; a runtime provider of the same id
   * gives way, as at start-up.
   */
  setConfigured(clients: ProviderClient[]): void {
    this.configured = new Map(clients.map((c) => [c.id, c]));
    this.runtime = new Map([...this.runtime].filter(([id]) => !this.configured.has(id)));
  }

  /** The runtime providers now (a client kept from before is reused, so its caches survive). */
  setRuntime(clients: ProviderClient[]): void {
    this.runtime = new Map(clients.filter((c) => !this.configured.has(c.id)).map((c) => [c.id, c]));
  }

  configuredClients(): ProviderClient[] {
    return [...this.configured.values()];
  }

  runtimeClients(): ProviderClient[] {
    return [...this.runtime.values()];
  }

  /** Who registers a client again when a provider answers `invalid_client` (the runtime providers' admin). */
  setReregistration(hook: (stale: ProviderClient) => Promise<ProviderClient | undefined>): void {
    this.reregistration = hook;
  }

  /**
   * After `invalid_client` from `stale`: the provider's client registered
   * again (or as another replica registered it), to retry with once; undefined
   * when it cannot register again (a YAML or pre-registered client), and the
   * error stands.
   */
  async reregister(stale: ProviderClient): Promise<ProviderClient | undefined> {
    return this.reregistration ? this.reregistration(stale) : undefined;
  }
}

/**
 * Runs `call` with the provider's client; when it is answered
 * `invalid_client` and the client can register again, runs it once more with
 * the new client. A second `invalid_client` is the caller's to handle.
 */
export async function withReregistration<T>(registry: ProviderRegistry, client: ProviderClient, call: (client: ProviderClient) => Promise<T>): Promise<T> {
  try {
    return await call(client);
  } catch (err) {
    const e = classifyProviderError(err);
    if (e.kind !== "rejected" || e.code !== "invalid_client") throw err;
    const fresh = await registry.reregister(client).catch(() => undefined);
    if (!fresh) throw err;
    return call(fresh);
  }
}
