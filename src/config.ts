import { readFileSync } from "node:fs";
import type { CryptoKey } from "openid-client";
import { dirname, resolve } from "node:path";
import { parse as parseYaml } from "yaml";
import { z } from "zod";
import { fileSchema, LOG_LEVELS, type FileConfig } from "./config/schema.js";
import { toForwardConfig, type ForwardConfig } from "./forward/config.js";
import { checkExposure, toCallers, toTls, toUserAssertion, type CallerConfig, type TlsConfig, type UserAssertionConfig } from "./config/security.js";
import { normalizeWebhooks, toWebhooks, webhookFiles, type WebhooksConfig } from "./config/webhooks.js";

export type { CallerConfig, RpcName, TlsConfig, UserAssertionConfig, UserBindingMode } from "./config/security.js";
export type { WebhookEndpoint, WebhooksConfig } from "./config/webhooks.js";

/** A provider the service refreshes and revokes tokens at. */
export interface ProviderConfig {
  id: string;
  issuer: string;
  clientId: string;
  /** Never logged; absent for public clients (`client_auth_method: none`). */
  clientSecret: string | undefined;
  clientAuthMethod: "client_secret_basic" | "client_secret_post" | "none" | "private_key_jwt";
  /** private_key_jwt: the key that signs client assertions now (the service's client signing key). */
  assertionKey?: () => { key: CryptoKey; kid: string };
  allowInsecureHttp: boolean;
  refreshMarginSeconds: number;
  /** The scopes StartAuthorization asks for by default; never sent on refresh. */
  scopes: string[] | undefined;
  /**
   * Down-scoping on refresh: sent as `scope`, narrowed to the session's granted
   * scope (see refreshScope). Unset: a refresh sends no scope (RFC 6749 §6).
   */
  refreshScopes: string[] | undefined;
  /** When set, discovery is skipped and these endpoints are used. */
  tokenEndpoint: string | undefined;
  revocationEndpoint: string | undefined;
  /** Lifetime assumed for an access token that states none (no expires_in, no JWT exp). */
  defaultTokenLifetimeSeconds: number;
  /** Where it comes from: the YAML file, or RegisterProvider (the database). */
  source: "config" | "runtime";
  /** Redirect URIs StartAuthorization may use; empty: any (the provider checks its own list). */
  redirectUris: string[];
  /** RFC 8707 resource its authorizations are for by default (a registered protected resource). */
  defaultResource: string | undefined;
  /** How audience tokens (GetToken with a resource) are obtained: refresh (RFC 8707) or exchange (RFC 8693). */
  audienceTokens: "refresh" | "exchange";
  /** For exchange: whether the target goes as `resource`, `audience` or both. */
  exchangeTarget: "resource" | "audience" | "both";
  /**
   * `oauth` (absent: the same): sessions of its own. `enterprise_managed`: no
   * sessions; GetToken derives its tokens from the user's session at
   * `enterpriseIdp` (ID-JAG), for `defaultResource`, at this issuer.
   */
  kind?: "oauth" | "enterprise_managed";
  /** enterprise_managed: the provider whose sessions hold the users' ID tokens. */
  enterpriseIdp?: string;
  /** Runtime providers only: the discovered metadata, kept in the database (no discovery at start-up). */
  metadata?: Record<string, unknown>;
  /** Runtime providers only: how it was registered and found. */
  runtime?: {
    registration: "static" | "dynamic" | "cimd";
    resourceUrl: string | undefined;
    openid: boolean;
    createdAt: Date;
    /** From a protected resource: its 401 challenge's `scope`, its metadata's `scopes_supported`, and that metadata's URL (RFC 9728). */
    challengeScopes?: string[];
    scopesSupported?: string[];
    resourceMetadataUrl?: string;
  };
}

export type DatabaseConfig =
  | { kind: "sqlite"; path: string }
  | { kind: "postgresql"; url: string };

/** Tuning of the refresh engine. All durations in milliseconds. */
export interface RefreshConfig {
  /** How long a replica owns a session's refresh; must outlive the provider budget. */
  leaseMs: number;
  /** Timeout of one HTTP request to a provider. */
  providerTimeoutMs: number;
  /** Attempts per refresh (first try plus retries) for network errors, 5xx and 429. */
  maxAttempts: number;
  /** First retry delay; doubles per attempt, with full jitter. */
  retryBaseDelayMs: number;
  /** Every session with a refresh token is refreshed at least this often, used or not; 0: off. */
  keepAliveMs: number;
  /** The sweeper's absolute lifetime (0: none): a session is not kept alive past it. */
  absoluteLifetimeMs: number;
  background: BackgroundConfig;
}

/** Refreshing recently used sessions ahead of expiry, so GetToken rarely waits on a provider. */
export interface BackgroundConfig {
  enabled: boolean;
  intervalMs: number;
  /** A session read within this window is kept fresh. */
  recentWindowMs: number;
  /** Background refreshes in flight per provider, per replica. */
  maxInflightPerProvider: number;
  /** Background refreshes in flight per provider over all replicas (live leases, counted in the database). */
  clusterMaxInflightPerProvider: number;
  batchSize: number;
}

/** The per-replica cache of sessions for GetToken (invalidated across replicas by NOTIFY). */
export interface CacheConfig {
  enabled: boolean;
  maxEntries: number;
  maxAgeMs: number;
}

/** Deleting sessions that can no longer be used. */
export interface SweeperConfig {
  enabled: boolean;
  intervalMs: number;
  /** Sessions older than this are deleted whatever their state; 0 keeps them. */
  absoluteLifetimeMs: number;
  /** REAUTH_REQUIRED sessions are kept this long (for ListSessions and support), then deleted. */
  reauthRetentionMs: number;
  /** Revoked and logged-out sessions (metadata only) are kept this long (`sessions.ended_retention_seconds`). */
  endedRetentionMs: number;
  /** Events are kept this long (`events.retention_seconds`). */
  eventRetentionMs: number;
  batchSize: number;
}

/** The `events:` settings: the outbox and WatchEvents. */
export interface EventsConfig {
  retentionMs: number;
  pollMs: number;
  maxWatchers: number;
  batchSize: number;
}

/** The `outbound:` settings: where runtime providers may make the service connect, and how much it reads. */
export interface OutboundSettings {
  /** Exceptions to the address rules: `host` (any port) or `host:port`, lower case; IPv6 in brackets. */
  allowHosts: string[];
  /** Private, loopback, CGNAT and unique-local addresses are allowed (link-local and the other special ranges stay refused). */
  allowPrivateNetworks: boolean;
  /** A runtime provider may be registered with (and use) plain http. */
  allowInsecureHttp: boolean;
  /** Largest response body read from any provider, YAML providers included. */
  maxResponseBytes: number;
}

export interface Config {
  /** The gRPC listener (grpc-js): TOKEN_SERVICE_ADDR. */
  host: string;
  port: number;
  /** The HTTP listener for Connect and gRPC-Web (connect-node): TOKEN_SERVICE_HTTP_ADDR; undefined: off. */
  http: { host: string; port: number } | undefined;
  database: DatabaseConfig;
  /** Raw `kid:base64[,kid:base64…]`; parsed by the key ring, never logged. */
  encryptionKeys: string | undefined;
  configFile: string | undefined;
  /** Every file the configuration was read from (the YAML file, TLS material, client secret files): what a reload watches. */
  files: string[];
  providers: ProviderConfig[];
  refresh: RefreshConfig;
  sweeper: SweeperConfig;
  events: EventsConfig;
  cache: CacheConfig;
  logLevel: string;
  /** Largest request message accepted, in bytes. */
  maxMessageBytes: number;
  /** The admin HTTP listener (/metrics, /healthz, /readyz); undefined: off. */
  admin: { host: string; port: number } | undefined;
  /** TLS for the listener; undefined: plain-text HTTP/2. */
  tls: TlsConfig | undefined;
  /** Allowed callers; empty: no authentication (loopback only). */
  callers: CallerConfig[];
  /** The issuer of user assertions, for callers with `user_binding: assertion`. */
  userAssertion: UserAssertionConfig | undefined;
  /** Serve grpc.reflection (v1 and v1alpha). */
  reflection: boolean;
  /** How long SIGTERM waits for in-flight calls before cutting them off. */
  shutdownGraceMs: number;
  /** last_used_at is written at most this often per session, to keep reads cheap. */
  lastUsedResolutionMs: number;
  /** How last_used_at writes are batched (sessions/last-used-writer.ts); its defaults when absent. Not in the YAML. */
  lastUsedBatch?: { flushMs?: number; batchSize?: number; maxPending?: number };
  /** The authorization code flow (StartAuthorization, CompleteAuthorization). */
  authorization: { stateTtlMs: number; maxStepUpsPerHour: number };
  /** The outbound policy for runtime providers, and the body cap of every provider (docs/security.md). */
  outbound: OutboundSettings;
  /** The HTTP listener's URL as providers and browsers reach it (public_url, TOKEN_SERVICE_PUBLIC_URL), without a trailing slash. */
  publicUrl: string | undefined;
  /** The service's client ID metadata document (served with an https public_url). */
  clientMetadata: ClientMetadataConfig;
  /** The forwarding proxy: its targets (YAML only) and settings. */
  forward: ForwardConfig;
  /** Signed webhooks fed from the events outbox; a reload applies them. */
  webhooks: WebhooksConfig;
}

/** The `client_metadata:` settings. */
export interface ClientMetadataConfig {
  clientName: string;
  redirectUris: string[];
  authMethod: "none" | "private_key_jwt";
}

/** public_url as written (YAML or env): an http(s) URL without query or fragment; returned without a trailing slash. */
function parsePublicUrl(value: string | undefined, name: string): string | undefined {
  if (value === undefined || value === "") return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new ConfigError(`${name}: must be an http(s) URL`);
  }
  if ((url.protocol !== "https:" && url.protocol !== "http:") || url.search !== "" || url.hash !== "" || url.username !== "" || url.password !== "") {
    throw new ConfigError(`${name}: must be an http(s) URL without credentials, query or fragment`);
  }
  return url.href.replace(/\/+$/, "");
}

/** A configuration problem; `message` names the field and never holds a secret. */
export class ConfigError extends Error {
  override name = "ConfigError";
}

const LOOPBACK_HOSTS = new Set(["localhost", "127.0.0.1", "::1", "[::1]"]);

/** True for host names that can only reach this machine. */
export function isLoopbackHost(host: string): boolean {
  return LOOPBACK_HOSTS.has(host) || /^127\.\d+\.\d+\.\d+$/.test(host);
}



function formatIssues(source: string, error: z.ZodError): string {
  const lines = error.issues.map((issue) => {
    const path = issue.path
      .map((p, i) => (typeof p === "number" ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`))
      .join("");
    return `  ${path || "(root)"}: ${issue.message}`;
  });
  return `invalid configuration in ${source}:\n${lines.join("\n")}`;
}

function parseAddr(value: string, name = "TOKEN_SERVICE_ADDR"): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(value);
  const port = m ? Number(m[3]) : NaN;
  if (!m || !(port >= 0 && port <= 65_535)) {
    throw new ConfigError(`${name}: expected HOST:PORT (for example 127.0.0.1:50051), got "${value}"`);
  }
  const host = m[1] ?? m[2] ?? "";
  return { host: host === "" ? "0.0.0.0" : host, port };
}

function parseDatabaseUrl(value: string, cwd: string): DatabaseConfig {
  if (value.startsWith("sqlite:")) {
    const path = value.slice("sqlite:".length).replace(/^\/\/(?=\/)/, "");
    if (path === "") throw new ConfigError("DATABASE_URL: sqlite: needs a file path, e.g. sqlite:data/token-service.db");
    return { kind: "sqlite", path: resolve(cwd, path) };
  }
  if (/^postgres(ql)?:\/\//.test(value)) {
    try {
      new URL(value);
    } catch {
      throw new ConfigError("DATABASE_URL: not a valid postgres:// URL");
    }
    return { kind: "postgresql", url: value };
  }
  throw new ConfigError("DATABASE_URL: must start with postgres://, postgresql:// or sqlite:");
}

function toProvider(p: FileConfig["providers"][number], index: number, baseDir: string): ProviderConfig {
  const where = `providers[${index}]`;
  if (p.client_secret !== undefined && p.client_secret_file !== undefined) {
    throw new ConfigError(`${where}: set client_secret or client_secret_file, not both`);
  }
  let clientSecret = p.client_secret;
  if (p.client_secret_file !== undefined) {
    try {
      clientSecret = readFileSync(resolve(baseDir, p.client_secret_file), "utf8").trim();
    } catch (err) {
      throw new ConfigError(
        `${where}.client_secret_file: cannot read ${p.client_secret_file} (${(err as NodeJS.ErrnoException).code ?? "error"})`,
      );
    }
    if (clientSecret === "") throw new ConfigError(`${where}.client_secret_file: the file is empty`);
  }
  if (p.client_auth_method !== "none" && clientSecret === undefined) {
    throw new ConfigError(
      `${where}: client_secret or client_secret_file is required unless client_auth_method is none`,
    );
  }
  for (const [field, url] of [
    ["issuer", p.issuer],
    ["token_endpoint", p.token_endpoint],
    ["revocation_endpoint", p.revocation_endpoint],
  ] as const) {
    if (url === undefined) continue;
    const u = new URL(url);
    if (u.protocol === "http:") {
      if (!p.allow_insecure_http) {
        throw new ConfigError(
          `${where}.${field}: must use https (allow_insecure_http: true is accepted for a loopback issuer only)`,
        );
      }
      if (!isLoopbackHost(u.hostname)) {
        throw new ConfigError(`${where}.allow_insecure_http: only allowed for a loopback host, not ${u.hostname}`);
      }
    }
  }
  return {
    id: p.id,
    issuer: p.issuer,
    clientId: p.client_id,
    clientSecret: p.client_auth_method === "none" ? undefined : clientSecret,
    clientAuthMethod: p.client_auth_method,
    allowInsecureHttp: p.allow_insecure_http,
    refreshMarginSeconds: p.refresh_margin_seconds,
    scopes: p.scopes,
    refreshScopes: p.refresh_scopes,
    tokenEndpoint: p.token_endpoint,
    revocationEndpoint: p.revocation_endpoint,
    defaultTokenLifetimeSeconds: p.default_token_lifetime_seconds,
    source: "config",
    redirectUris: p.redirect_uris ?? [],
    defaultResource: p.default_resource,
    audienceTokens: p.audience_tokens,
    exchangeTarget: p.exchange_target,
    ...(p.enterprise_idp !== undefined ? { enterpriseIdp: p.enterprise_idp } : {}),
    ...(p.kind === "enterprise_managed" ? { kind: p.kind } : {}),
  };
}

/** The enterprise_managed providers of the file name an OpenID provider of the file, and a resource. */
function checkEnterpriseManaged(providers: ProviderConfig[]): void {
  const byId = new Map(providers.map((p) => [p.id, p]));
  providers.forEach((p, i) => {
    const where = `providers[${i}]`;
    if (p.kind !== "enterprise_managed") {
      if (p.enterpriseIdp !== undefined) throw new ConfigError(`${where}.enterprise_idp: only for kind enterprise_managed`);
      return;
    }
    if (p.enterpriseIdp === undefined) throw new ConfigError(`${where}.enterprise_idp: is required for kind enterprise_managed`);
    const idp = byId.get(p.enterpriseIdp);
    if (!idp || idp.kind === "enterprise_managed") {
      throw new ConfigError(`${where}.enterprise_idp: must name another provider of this file (not an enterprise_managed one)`);
    }
    if (p.defaultResource === undefined) throw new ConfigError(`${where}.default_resource: is required for kind enterprise_managed (the resource its tokens are for)`);
  });
}

/**
 * Parses the YAML configuration text. Exported for tests; `loadConfig` is the
 * entry point.
 */
export function parseConfigFile(text: string, source: string): FileConfig {
  let raw: unknown;
  try {
    raw = parseYaml(text) ?? {};
  } catch (err) {
    throw new ConfigError(`invalid configuration in ${source}: not valid YAML (${(err as Error).message.split("\n")[0]})`);
  }
  const parsed = fileSchema.safeParse(normalizeWebhooks(raw));
  if (!parsed.success) throw new ConfigError(formatIssues(source, parsed.error));
  return parsed.data;
}

/**
 * Loads and validates the configuration once, from the environment and the
 * optional YAML file named by TOKEN_SERVICE_CONFIG. Throws ConfigError naming
 * the bad field.
 */
export function loadConfig(env: NodeJS.ProcessEnv, cwd: string = process.cwd()): Config {
  const configFile = env.TOKEN_SERVICE_CONFIG ? resolve(cwd, env.TOKEN_SERVICE_CONFIG) : undefined;
  let fileText = "";
  if (configFile !== undefined) {
    try {
      fileText = readFileSync(configFile, "utf8");
    } catch (err) {
      throw new ConfigError(
        `TOKEN_SERVICE_CONFIG: cannot read ${configFile} (${(err as NodeJS.ErrnoException).code ?? "error"})`,
      );
    }
  }
  const file = parseConfigFile(fileText, configFile ?? "(no config file)");
  const baseDir = configFile ? dirname(configFile) : cwd;
  const providers = file.providers.map((p, i) => toProvider(p, i, baseDir));
  const seen = new Set<string>();
  providers.forEach((p, i) => {
    if (seen.has(p.id)) throw new ConfigError(`providers[${i}].id: duplicate provider id "${p.id}"`);
    seen.add(p.id);
  });
  checkEnterpriseManaged(providers);

  const { host, port } = parseAddr(env.TOKEN_SERVICE_ADDR ?? "127.0.0.1:50051");
  const httpSpec = env.TOKEN_SERVICE_HTTP_ADDR ?? "127.0.0.1:50052";
  const httpAddr = httpSpec === "off" ? undefined : parseAddr(httpSpec, "TOKEN_SERVICE_HTTP_ADDR");
  const adminSpec = env.TOKEN_SERVICE_ADMIN_ADDR ?? "127.0.0.1:9464";
  const admin = adminSpec === "off" ? undefined : parseAddr(adminSpec, "TOKEN_SERVICE_ADMIN_ADDR");
  const database = parseDatabaseUrl(env.DATABASE_URL ?? "sqlite:data/token-service.db", cwd);
  const keys = env.TOKEN_SERVICE_ENCRYPTION_KEYS?.trim();

  const refresh: RefreshConfig = {
    leaseMs: Math.round(file.refresh.lease_seconds * 1000),
    providerTimeoutMs: Math.round(file.refresh.provider_timeout_seconds * 1000),
    maxAttempts: file.refresh.max_attempts,
    retryBaseDelayMs: file.refresh.retry_base_delay_ms,
    keepAliveMs: Math.round(file.refresh.keep_alive_seconds * 1000),
    absoluteLifetimeMs: Math.round(file.sweeper.absolute_lifetime_days * 86_400_000),
    background: {
      enabled: file.refresh.background.enabled,
      intervalMs: Math.round(file.refresh.background.interval_seconds * 1000),
      recentWindowMs: Math.round(file.refresh.background.recent_window_seconds * 1000),
      maxInflightPerProvider: file.refresh.background.max_inflight_per_provider,
      clusterMaxInflightPerProvider: file.refresh.background.cluster_max_inflight_per_provider,
      batchSize: file.refresh.background.batch_size,
    },
  };
  const sweeper: SweeperConfig = {
    enabled: file.sweeper.enabled,
    intervalMs: Math.round(file.sweeper.interval_seconds * 1000),
    absoluteLifetimeMs: Math.round(file.sweeper.absolute_lifetime_days * 86_400_000),
    reauthRetentionMs: Math.round(file.sweeper.reauth_retention_hours * 3_600_000),
    endedRetentionMs: file.sessions.ended_retention_seconds * 1000,
    eventRetentionMs: file.events.retention_seconds * 1000,
    batchSize: file.sweeper.batch_size,
  };
  const events: EventsConfig = {
    retentionMs: file.events.retention_seconds * 1000,
    pollMs: Math.round(file.events.poll_interval_seconds * 1000),
    maxWatchers: file.events.max_watchers,
    batchSize: file.events.batch_size,
  };
  if (refresh.leaseMs < refresh.providerTimeoutMs + 1000) {
    throw new ConfigError(
      "refresh.lease_seconds: must exceed refresh.provider_timeout_seconds by at least 1 s, so a lease outlives the provider call",
    );
  }

  let tls: TlsConfig | undefined;
  let callers: CallerConfig[];
  let userAssertion: UserAssertionConfig | undefined;
  let webhooks: WebhooksConfig;
  try {
    webhooks = toWebhooks(file, baseDir, isLoopbackHost);
    tls = toTls(file.tls, baseDir);
    userAssertion = toUserAssertion(file.user_assertion, baseDir);
    callers = toCallers(file.callers, tls, new Set(providers.map((p) => p.id)), userAssertion);
    const exposure = { callers: callers.length, tls: tls !== undefined, insecurePlaintext: file.insecure_plaintext };
    checkExposure({ ...exposure, variable: "TOKEN_SERVICE_ADDR", loopback: isLoopbackHost(host) });
    if (httpAddr) checkExposure({ ...exposure, variable: "TOKEN_SERVICE_HTTP_ADDR", loopback: isLoopbackHost(httpAddr.host) });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }

  let forwarding: ReturnType<typeof toForwardConfig>;
  try {
    forwarding = toForwardConfig(file.forward, file.forward_settings, { baseDir, providers: new Set(providers.map((p) => p.id)), isLoopback: isLoopbackHost });
  } catch (err) {
    throw new ConfigError((err as Error).message);
  }

  const logLevel = env.TOKEN_SERVICE_LOG_LEVEL ?? file.log_level;
  if (!LOG_LEVELS.includes(logLevel as (typeof LOG_LEVELS)[number])) {
    throw new ConfigError(`TOKEN_SERVICE_LOG_LEVEL: must be one of ${LOG_LEVELS.join(", ")}`);
  }

  return {
    host,
    port,
    http: httpAddr,
    database,
    encryptionKeys: keys === "" ? undefined : keys,
    configFile,
    files: [
      ...(configFile ? [configFile] : []),
      ...[file.tls?.cert_file, file.tls?.key_file, file.tls?.client_ca_file].flatMap((f) => (f ? [resolve(baseDir, f)] : [])),
      ...file.providers.flatMap((p) => (p.client_secret_file ? [resolve(baseDir, p.client_secret_file)] : [])),
      ...(file.user_assertion?.jwks_file ? [resolve(baseDir, file.user_assertion.jwks_file)] : []),
      ...forwarding.files,
      ...webhookFiles(file, baseDir),
    ],
    providers,
    refresh,
    sweeper,
    events,
    cache: {
      enabled: file.cache.enabled,
      maxEntries: file.cache.max_entries,
      maxAgeMs: Math.round(file.cache.max_age_seconds * 1000),
    },
    logLevel,
    maxMessageBytes: file.limits.max_message_bytes,
    admin,
    tls,
    callers,
    userAssertion,
    reflection: file.reflection,
    shutdownGraceMs: Math.round(file.shutdown_grace_seconds * 1000),
    lastUsedResolutionMs: 60_000,
    authorization: { stateTtlMs: file.authorization.state_ttl_seconds * 1000, maxStepUpsPerHour: file.authorization.max_step_ups_per_hour },
    outbound: {
      allowHosts: (file.outbound.allow_hosts ?? []).map((h) => h.toLowerCase()),
      allowPrivateNetworks: file.outbound.allow_private_networks,
      allowInsecureHttp: file.outbound.allow_insecure_http,
      maxResponseBytes: file.outbound.max_response_bytes,
    },
    publicUrl: env.TOKEN_SERVICE_PUBLIC_URL ? parsePublicUrl(env.TOKEN_SERVICE_PUBLIC_URL, "TOKEN_SERVICE_PUBLIC_URL") : parsePublicUrl(file.public_url, "public_url"),
    clientMetadata: {
      clientName: file.client_metadata.client_name ?? "token-service",
      redirectUris: file.client_metadata.redirect_uris ?? [],
      authMethod: file.client_metadata.token_endpoint_auth_method,
    },
    forward: forwarding.forward,
    webhooks,
  };
}
