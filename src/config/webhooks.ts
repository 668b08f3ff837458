import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { EVENT_KINDS, isEventKind } from "../events/types.js";
import type { FileConfig } from "./schema.js";

/** One webhook endpoint: where events go, which kinds, and its Standard Webhooks secret. */
export interface WebhookEndpoint {
  id: string;
  url: string;
  /** Event kinds sent; "*" sends every kind. */
  events: string[];
  /**
   * The HMAC-SHA256 keys (the bytes after `whsec_`, base64-decoded), one per
   * line of the secret file: every attempt is signed with each (a rotation
   * keeps the old one on a second line for a while); never logged.
   */
  secrets: Buffer[];
}

/** The `webhooks:` settings, durations in milliseconds. */
export interface WebhooksConfig {
  endpoints: WebhookEndpoint[];
  maxAgeMs: number;
  timeoutMs: number;
  leaseMs: number;
  concurrency: number;
  intervalMs: number;
  retryBaseDelayMs: number;
  retryMaxDelayMs: number;
  deliveredRetentionMs: number;
  deadRetentionMs: number;
}

/** Bounds of a Standard Webhooks symmetric secret: at least 24 bytes (192 bits), at most 64 (512 bits). */
export const SECRET_MIN_BYTES = 24;
export const SECRET_MAX_BYTES = 64;
const PREFIX = "whsec_";
/** Secrets per file: the current one and, during rotations, older ones. */
const MAX_SECRETS = 4;

/**
 * The key of a `whsec_…` secret. Throws an Error naming what is wrong,
 * never quoting the value.
 */
export function parseWebhookSecret(text: string): Buffer {
  const value = text.trim();
  if (!value.startsWith(PREFIX)) throw new Error(`must start with ${PREFIX}`);
  const b64 = value.slice(PREFIX.length);
  if (!/^[A-Za-z0-9+/]+={0,2}$/.test(b64) || b64.length % 4 !== 0) throw new Error(`must be ${PREFIX} followed by standard base64`);
  const key = Buffer.from(b64, "base64");
  if (key.length < SECRET_MIN_BYTES || key.length > SECRET_MAX_BYTES) {
    throw new Error(`must encode ${SECRET_MIN_BYTES} to ${SECRET_MAX_BYTES} bytes (it encodes ${key.length})`);
  }
  return key;
}

/**
 * `webhooks: [...]` is short for `webhooks: {endpoints: [...]}`: the YAML
 * as written, with the list moved under `endpoints` (before the schema).
 */
export function normalizeWebhooks(raw: unknown): unknown {
  if (raw && typeof raw === "object" && !Array.isArray(raw) && Array.isArray((raw as Record<string, unknown>).webhooks)) {
    return { ...(raw as Record<string, unknown>), webhooks: { endpoints: (raw as Record<string, unknown>).webhooks } };
  }
  return raw;
}

/** Whether `host` can only reach this machine (config.ts's isLoopbackHost). */
type LoopbackCheck = (host: string) => boolean;

/**
 * The webhooks of the file, checked: ids unique, URLs https (plain http
 * only where the outbound policy lets it through: outbound.allow_insecure_http
 * and a loopback host or one in outbound.allow_hosts), no credentials or
 * fragment in the URL, each secret file readable and a Standard Webhooks
 * secret. Problems are thrown as Error(message naming the field).
 */
export function toWebhooks(file: FileConfig, baseDir: string, isLoopback: LoopbackCheck): WebhooksConfig {
  const w = file.webhooks;
  const seen = new Set<string>();
  const allowHosts = (file.outbound.allow_hosts ?? []).map((h) => h.toLowerCase());
  const endpoints = w.endpoints.map((e, i): WebhookEndpoint => {
    const where = `webhooks.endpoints[${i}]`;
    if (seen.has(e.id)) throw new Error(`${where}.id: duplicate webhook id "${e.id}"`);
    seen.add(e.id);
    const unknown = e.events.find((k) => k !== "*" && !isEventKind(k));
    if (unknown !== undefined) throw new Error(`${where}.events: "${unknown}" is not an event kind (${EVENT_KINDS.join(", ")}, or "*")`);
    const url = new URL(e.url);
    if (url.username !== "" || url.password !== "" || url.hash !== "") throw new Error(`${where}.url: must not hold credentials or a fragment`);
    if (url.protocol === "http:") {
      const host = url.hostname.toLowerCase();
      const port = url.port || "80";
      const allowed = allowHosts.includes(host) || allowHosts.includes(`${host}:${port}`) || isLoopback(host);
      if (!file.outbound.allow_insecure_http || !allowed) {
        throw new Error(`${where}.url: must use https (plain http needs outbound.allow_insecure_http and a loopback host or one in outbound.allow_hosts)`);
      }
    }
    let text: string;
    try {
      text = readFileSync(resolve(baseDir, e.secret_file), "utf8");
    } catch (err) {
      throw new Error(`${where}.secret_file: cannot read ${e.secret_file} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
    }
    const lines = text.split("\n").map((l) => l.trim()).filter((l) => l !== "");
    if (lines.length === 0) throw new Error(`${where}.secret_file: the file is empty`);
    if (lines.length > MAX_SECRETS) throw new Error(`${where}.secret_file: at most ${MAX_SECRETS} secrets (one per line)`);
    const secrets = lines.map((line, n) => {
      try {
        return parseWebhookSecret(line);
      } catch (err) {
        throw new Error(`${where}.secret_file: the secret on line ${n + 1} ${(err as Error).message}`);
      }
    });
    return { id: e.id, url: url.href, events: [...new Set(e.events)], secrets };
  });
  if (w.lease_seconds < w.timeout_seconds + 1) {
    throw new Error("webhooks.lease_seconds: must exceed webhooks.timeout_seconds by at least 1 s, so a lease outlives an attempt");
  }
  if (w.retry_max_delay_seconds < w.retry_base_delay_seconds) {
    throw new Error("webhooks.retry_max_delay_seconds: must not be below webhooks.retry_base_delay_seconds");
  }
  const ms = (s: number) => Math.round(s * 1000);
  return {
    endpoints,
    maxAgeMs: ms(w.max_age_seconds),
    timeoutMs: ms(w.timeout_seconds),
    leaseMs: ms(w.lease_seconds),
    concurrency: w.concurrency,
    intervalMs: ms(w.interval_seconds),
    retryBaseDelayMs: ms(w.retry_base_delay_seconds),
    retryMaxDelayMs: ms(w.retry_max_delay_seconds),
    deliveredRetentionMs: ms(w.delivered_retention_seconds),
    deadRetentionMs: ms(w.dead_retention_seconds),
  };
}

/** The secret files a reload watches. */
export function webhookFiles(file: FileConfig, baseDir: string): string[] {
  return file.webhooks.endpoints.map((e) => resolve(baseDir, e.secret_file));
}
