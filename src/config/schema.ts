import { z } from "zod";
import { forwardSettingsSchema, forwardTargetSchema } from "../forward/config.js";
import { callerSchema, tlsSchema, userAssertionSchema } from "./security.js";

/** The shape of the YAML file (snake_case, as written), with its defaults. loadConfig turns it into Config. */

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;

const httpUrl = z.string().refine((s) => {
  try {
    const u = new URL(s);
    return u.protocol === "https:" || u.protocol === "http:";
  } catch {
    return false;
  }
}, "must be an http(s) URL");

const scopeToken = z.string().regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/, "must be a scope token");

const providerSchema = z
  .object({
    id: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/, "must be 1-64 letters, digits, '_', '.' or '-'"),
    issuer: httpUrl,
    client_id: z.string().min(1),
    client_secret: z.string().min(1).optional(),
    client_secret_file: z.string().min(1).optional(),
    client_auth_method: z
      .enum(["client_secret_basic", "client_secret_post", "none"])
      .default("client_secret_basic"),
    allow_insecure_http: z.boolean().default(false),
    refresh_margin_seconds: z.number().int().min(0).max(86_400).default(60),
    scopes: z.array(scopeToken).optional(),
    refresh_scopes: z.array(scopeToken).optional(),
    token_endpoint: httpUrl.optional(),
    revocation_endpoint: httpUrl.optional(),
    default_token_lifetime_seconds: z.number().int().min(1).max(31_536_000).default(300),
    // For StartAuthorization: the redirect URIs allowed (default: any; the provider checks its own list),
    // and the RFC 8707 resource its authorizations are for by default.
    redirect_uris: z.array(httpUrl).optional(),
    default_resource: httpUrl.optional(),
    // GetToken with a resource: a refresh token grant with resource= (RFC 8707), or a token exchange (RFC 8693).
    audience_tokens: z.enum(["refresh", "exchange"]).default("refresh"),
    exchange_target: z.enum(["resource", "audience", "both"]).default("resource"),
    // enterprise_managed (ID-JAG, docs/tool-servers.md): tokens from the user's session at `enterprise_idp`, for `default_resource`.
    kind: z.enum(["oauth", "enterprise_managed"]).default("oauth"),
    enterprise_idp: z.string().min(1).optional(),
  })
  .strict();

/** One webhook of the YAML file: where events go, which kinds, and the file of its Standard Webhooks secret. */
const webhookSchema = z
  .object({
    id: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/, "must be 1-64 letters, digits, '_' or '-'"),
    url: httpUrl,
    // Event kinds (session.refresh_failing, …), or "*" for every kind.
    events: z.array(z.string().regex(/^(?:\*|[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)+)$/, "must be an event kind such as session.revoked, or \"*\"")).min(1),
    // A file holding whsec_ and the base64 of 24 to 64 random bytes (the Standard Webhooks form).
    secret_file: z.string().min(1),
  })
  .strict();

export const fileSchema = z
  .object({
    providers: z.array(providerSchema).default([]),
    refresh: z
      .object({
        lease_seconds: z.number().min(1).max(600).default(30),
        provider_timeout_seconds: z.number().min(0.1).max(120).default(10),
        max_attempts: z.number().int().min(1).max(10).default(3),
        retry_base_delay_ms: z.number().int().min(1).max(60_000).default(200),
        // Every session with a refresh token is refreshed at least this often, used or not (0: off).
        keep_alive_seconds: z.number().min(0).max(365 * 86_400).default(86_400),
        background: z
          .object({
            enabled: z.boolean().default(true),
            interval_seconds: z.number().min(0.1).max(3600).default(2),
            recent_window_seconds: z.number().min(1).max(90 * 86_400).default(86_400),
            max_inflight_per_provider: z.number().int().min(1).max(1000).default(32),
            // Counted in the database over every replica: what a provider sees at most from the whole cluster.
            cluster_max_inflight_per_provider: z.number().int().min(1).max(10_000).default(64),
            batch_size: z.number().int().min(1).max(10_000).default(200),
          })
          .strict()
          .prefault({}),
      })
      .strict()
      .prefault({}),
    cache: z
      .object({
        enabled: z.boolean().default(true),
        max_entries: z.number().int().min(1).max(10_000_000).default(10_000),
        max_age_seconds: z.number().min(0.1).max(3600).default(30),
      })
      .strict()
      .prefault({}),
    sweeper: z
      .object({
        enabled: z.boolean().default(true),
        interval_seconds: z.number().min(1).max(86_400).default(60),
        absolute_lifetime_days: z.number().min(0).max(3650).default(90),
        reauth_retention_hours: z.number().min(0).max(87_600).default(168),
        batch_size: z.number().int().min(1).max(100_000).default(500),
      })
      .strict()
      .prefault({}),
    sessions: z
      .object({
        // Revoked and logged-out sessions are kept this long as metadata without tokens (ListSessions include_ended), then swept.
        ended_retention_seconds: z.number().int().min(0).max(315_360_000).default(604_800),
      })
      .strict()
      .prefault({}),
    events: z
      .object({
        // How long the outbox keeps events (a WatchEvents cursor older than that is refused with OUT_OF_RANGE).
        retention_seconds: z.number().int().min(60).max(315_360_000).default(604_800),
        // The safety-net poll of the outbox, besides the in-process and NOTIFY wake-ups.
        poll_interval_seconds: z.number().min(0.1).max(3600).default(5),
        // WatchEvents streams open at once on one replica; more are refused with RESOURCE_EXHAUSTED.
        max_watchers: z.number().int().min(1).max(100_000).default(100),
        // Events read from the outbox per round trip, per watcher.
        batch_size: z.number().int().min(1).max(10_000).default(100),
      })
      .strict()
      .prefault({}),
    limits: z
      .object({
        max_message_bytes: z.number().int().min(1024).max(64 * 1024 * 1024).default(256 * 1024),
      })
      .strict()
      .prefault({}),
    tls: tlsSchema.optional(),
    callers: z.array(callerSchema).default([]),
    user_assertion: userAssertionSchema.optional(),
    insecure_plaintext: z.boolean().default(false),
    reflection: z.boolean().default(true),
    shutdown_grace_seconds: z.number().min(0).max(600).default(10),
    log_level: z.enum(LOG_LEVELS).default("info"),
    // Where runtime providers (and what their metadata names) may make the service connect; docs/security.md.
    outbound: z
      .object({
        allow_hosts: z
          .array(
            z
              .string()
              .regex(/^(?:[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(?::\d{1,5})?$/, "must be a host or host:port"),
          )
          .optional(),
        allow_private_networks: z.boolean().default(false),
        allow_insecure_http: z.boolean().default(false),
        max_response_bytes: z.number().int().min(1024).max(256 * 1024 * 1024).default(1024 * 1024),
      })
      .strict()
      .prefault({}),
    // The HTTP listener's URL as providers and browsers reach it; with https, it serves the client metadata document.
    public_url: httpUrl.optional(),
    // The client ID metadata document served at {public_url}/oauth/client-metadata.json (docs/tool-servers.md).
    client_metadata: z
      .object({
        client_name: z.string().min(1).max(200).optional(),
        redirect_uris: z.array(httpUrl).optional(),
        token_endpoint_auth_method: z.enum(["none", "private_key_jwt"]).default("none"),
      })
      .strict()
      .prefault({}),
    // Signed webhooks fed from the events outbox (docs/connection-health.md#webhooks). `webhooks: [...]` is short for `webhooks: {endpoints: [...]}`.
    webhooks: z
      .object({
        endpoints: z.array(webhookSchema).default([]),
        // Retries go on for this long after the event (or a manual retry); then the delivery is a dead letter.
        max_age_seconds: z.number().int().min(1).max(30 * 86_400).default(86_400),
        // One attempt: connecting, sending and reading the answer.
        timeout_seconds: z.number().min(0.1).max(120).default(15),
        // How long a replica owns a delivery's attempt; must exceed timeout_seconds by 1 s.
        lease_seconds: z.number().min(1).max(600).default(30),
        // Attempts in flight per replica.
        concurrency: z.number().int().min(1).max(256).default(8),
        // How often each replica looks for new events and due deliveries.
        interval_seconds: z.number().min(0.05).max(60).default(1),
        // The first retry's delay; it doubles per attempt (full jitter), up to retry_max_delay_seconds.
        retry_base_delay_seconds: z.number().min(0.01).max(3600).default(5),
        retry_max_delay_seconds: z.number().min(0.01).max(86_400).default(3600),
        // Delivered deliveries are kept this long, dead letters this long after they died; then deleted.
        delivered_retention_seconds: z.number().int().min(0).max(90 * 86_400).default(86_400),
        dead_retention_seconds: z.number().int().min(0).max(365 * 86_400).default(7 * 86_400),
      })
      .strict()
      .prefault({}),
    authorization: z
      .object({
        // How long a started authorization (its state, PKCE verifier and nonce) may be completed.
        state_ttl_seconds: z.number().int().min(30).max(86_400).default(600),
        // Step-ups (StartAuthorization with session_id) per session in any hour, counted in the database.
        max_step_ups_per_hour: z.number().int().min(0).max(100).default(3),
      })
      .strict()
      .prefault({}),
    // The forwarding proxy's targets (docs/forwarding.md): /forward/{id}/… on the HTTP listener.
    forward: z.array(forwardTargetSchema).default([]),
    forward_settings: forwardSettingsSchema,
  })
  .strict();

export type FileConfig = z.infer<typeof fileSchema>;
