import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { z } from "zod";
import { resourceProblem } from "../util/resource-indicator.js";
import { reservedHeader } from "./headers.js";

/** Characters a target id may use: it is one URL path segment, a log field and a metric label. */
const TARGET_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** An HTTP field name (RFC 9110 §5.1: a token). */
const FIELD_NAME = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/;

/** One `forward:` entry of the YAML file, as written. */
export const forwardTargetSchema = z
  .object({
    id: z.string().regex(TARGET_ID, "must be 1-64 letters, digits, '_', '.' or '-'"),
    url: z.string().min(1),
    provider: z.string().min(1),
    resource: z.string().refine((v) => resourceProblem(v) === undefined, "must be an absolute URI without a fragment, a query or credentials").optional(),
    fallback_key_file: z.string().min(1).optional(),
    header: z
      .string()
      .regex(FIELD_NAME, "must be an HTTP header name")
      .refine((h) => !reservedHeader(h), "must not be a hop-by-hop, host, content-length, cookie or x-token-service-* header")
      .default("authorization"),
    connect_timeout_ms: z.number().int().min(1).max(120_000).default(5_000),
    first_byte_timeout_ms: z.number().int().min(1).max(3_600_000).default(60_000),
    ca_file: z.string().min(1).optional(),
    allow_insecure_http: z.boolean().default(false),
  })
  .strict();

/** `forward_settings:` of the YAML file, as written. */
export const forwardSettingsSchema = z
  .object({
    replay_max_bytes: z.number().int().min(0).max(64 * 1024 * 1024).default(1024 * 1024),
  })
  .strict()
  .prefault({});

/** A forwarding target: where `/forward/{id}/…` goes and whose token it carries. */
export interface ForwardTarget {
  id: string;
  /** The base URL, without a trailing slash; the caller's path is appended to it. */
  url: string;
  /** The provider whose sessions' tokens are injected. */
  provider: string;
  /** When set, the session's audience token for this RFC 8707 resource is injected instead of its own access token. */
  resource: string | undefined;
  /** The static key used when the user has no usable session; never logged. */
  fallbackKey: string | undefined;
  /** Lower-case header name; `authorization` carries `Bearer <token>`, any other header the token alone. */
  header: string;
  connectTimeoutMs: number;
  firstByteTimeoutMs: number;
  /** PEM CAs that verify the target's certificate instead of the system's. */
  ca: Buffer | undefined;
}

/** The forwarding proxy's configuration. */
export interface ForwardConfig {
  targets: ForwardTarget[];
  /** A request body up to this size is kept, so a request answered 401 invalid_token can be sent again after a refresh. */
  replayMaxBytes: number;
}

/** A configuration problem of `forward:`; thrown as a plain Error, turned into ConfigError by the loader. */
function problem(where: string, message: string): never {
  throw new Error(`${where}: ${message}`);
}

function readFile(where: string, baseDir: string, path: string): Buffer {
  try {
    return readFileSync(resolve(baseDir, path));
  } catch (err) {
    problem(where, `cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

/** The base URL: https, or http to a loopback host with `allow_insecure_http`; no credentials, query or fragment. */
function checkUrl(where: string, value: string, allowHttp: boolean, isLoopback: (host: string) => boolean): string {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    problem(where, "must be an https URL");
  }
  if (url.username !== "" || url.password !== "" || url.search !== "" || url.hash !== "") problem(where, "must not hold credentials, a query or a fragment");
  if (url.protocol === "http:") {
    if (!allowHttp) problem(where, "must use https (allow_insecure_http: true is accepted for a loopback host only)");
    if (!isLoopback(url.hostname)) problem(where, `plain http is only allowed for a loopback host, not ${url.hostname}`);
  } else if (url.protocol !== "https:") {
    problem(where, "must be an https URL");
  }
  return url.href.replace(/\/+$/, "");
}

/**
 * The `forward:` list and `forward_settings:` as the service uses them:
 * ids unique, URLs checked, providers among the YAML providers, the
 * fallback key and CA files read. Returns the files read (watched for
 * reloads) beside the configuration.
 */
export function toForwardConfig(
  targets: Array<z.infer<typeof forwardTargetSchema>>,
  settings: z.infer<typeof forwardSettingsSchema>,
  context: { baseDir: string; providers: ReadonlySet<string>; isLoopback: (host: string) => boolean },
): { forward: ForwardConfig; files: string[] } {
  const seen = new Set<string>();
  const files: string[] = [];
  const out = targets.map((t, i): ForwardTarget => {
    const where = `forward[${i}]`;
    if (seen.has(t.id)) problem(`${where}.id`, `duplicate forward target id "${t.id}"`);
    seen.add(t.id);
    if (!context.providers.has(t.provider)) problem(`${where}.provider`, `"${t.provider}" is not a provider of this file`);
    const url = checkUrl(`${where}.url`, t.url, t.allow_insecure_http, context.isLoopback);
    let fallbackKey: string | undefined;
    if (t.fallback_key_file !== undefined) {
      fallbackKey = readFile(`${where}.fallback_key_file`, context.baseDir, t.fallback_key_file).toString("utf8").trim();
      if (fallbackKey === "") problem(`${where}.fallback_key_file`, "the file is empty");
      if (!/^[\x21-\x7E]+$/.test(fallbackKey)) problem(`${where}.fallback_key_file`, "the key must be printable ASCII without spaces");
      files.push(resolve(context.baseDir, t.fallback_key_file));
    }
    let ca: Buffer | undefined;
    if (t.ca_file !== undefined) {
      ca = readFile(`${where}.ca_file`, context.baseDir, t.ca_file);
      if (!ca.toString("utf8").includes("-----BEGIN CERTIFICATE-----")) problem(`${where}.ca_file`, "must hold PEM certificates");
      files.push(resolve(context.baseDir, t.ca_file));
    }
    return {
      id: t.id,
      url,
      provider: t.provider,
      resource: t.resource,
      fallbackKey,
      header: t.header.toLowerCase(),
      connectTimeoutMs: t.connect_timeout_ms,
      firstByteTimeoutMs: t.first_byte_timeout_ms,
      ca,
    };
  });
  return { forward: { targets: out, replayMaxBytes: settings.replay_max_bytes }, files };
}
