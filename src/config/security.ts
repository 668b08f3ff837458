import { createPrivateKey, X509Certificate } from "node:crypto";
import { readFileSync } from "node:fs";
import { resolve } from "node:path";
import { z } from "zod";
import { resourceProblem } from "../util/resource-indicator.js";

/** RPC names a caller may be granted, as written in `callers[].rpcs`. */
export const RPC_NAMES = [
  "StoreSession",
  "GetToken",
  "RevokeSession",
  "ListSessions",
  "RevokeUserSessions",
  "StartAuthorization",
  "CompleteAuthorization",
  "RegisterProvider",
  "ListProviders",
  "DeleteProvider",
  "WatchEvents",
] as const;
export type RpcName = (typeof RPC_NAMES)[number];

/** An allowed caller of the service. */
export interface CallerConfig {
  name: string;
  /** SHA-256 of its bearer credential (32 bytes), compared in constant time. */
  tokenSha256: Buffer | undefined;
  /** Client certificate subject CN or DNS SAN that identifies it (mutual TLS). */
  mtlsSubject: string | undefined;
  /** RPCs it may call; undefined means all of them ('*'). */
  rpcs: ReadonlySet<RpcName> | undefined;
  /** Providers it may act on; undefined means all. */
  providers: ReadonlySet<string> | undefined;
  /** Audiences (RFC 8707 resources) it may ask tokens for; undefined means all. */
  resources: ReadonlySet<string> | undefined;
  /** Token bucket per replica: sustained calls per second and burst size. */
  rateLimit: { perSecond: number; burst: number } | undefined;
  /** How it may name users: freely, only through a session id, or with a signed user assertion. */
  userBinding: UserBindingMode;
}

export const USER_BINDINGS = ["none", "session_id", "assertion"] as const;
export type UserBindingMode = (typeof USER_BINDINGS)[number];

/** The issuer of user assertions (`user_assertion`), for callers with `user_binding: assertion`. */
export interface UserAssertionConfig {
  issuer: string;
  audience: string;
  /** The claim that must equal the request's user_id. */
  claim: string;
  /** Where its JWK set is fetched from, or the set itself (read from `jwks_file`). */
  jwksUri: string | undefined;
  jwks: { keys: Array<Record<string, unknown>> } | undefined;
}

export const userAssertionSchema = z
  .object({
    issuer: z.string().min(1),
    jwks_uri: z.url({ protocol: /^https?$/, error: "must be an http(s) URL" }).optional(),
    jwks_file: z.string().min(1).optional(),
    audience: z.string().min(1),
    claim: z.string().min(1).optional(),
  })
  .strict();

type RawUserAssertion = z.infer<typeof userAssertionSchema>;

export function toUserAssertion(raw: RawUserAssertion | undefined, baseDir: string): UserAssertionConfig | undefined {
  if (!raw) return undefined;
  if ((raw.jwks_uri === undefined) === (raw.jwks_file === undefined)) throw new Error("user_assertion: needs exactly one of jwks_uri and jwks_file");
  let jwks: UserAssertionConfig["jwks"];
  if (raw.jwks_file) {
    try {
      jwks = JSON.parse(readFile(baseDir, raw.jwks_file, "user_assertion.jwks_file").toString("utf8")) as UserAssertionConfig["jwks"];
    } catch (err) {
      if (!(err instanceof SyntaxError)) throw err;
    }
    if (!jwks || !Array.isArray(jwks.keys) || jwks.keys.length === 0) throw new Error("user_assertion.jwks_file: not a JWK set with keys");
  }
  return { issuer: raw.issuer, audience: raw.audience, claim: raw.claim ?? "sub", jwksUri: raw.jwks_uri, jwks };
}

/** TLS for the listener, read at start-up. */
export interface TlsConfig {
  cert: Buffer;
  key: Buffer;
  /** CAs whose client certificates identify mTLS callers. */
  clientCa: Buffer | undefined;
}

export const tlsSchema = z
  .object({
    cert_file: z.string().min(1),
    key_file: z.string().min(1),
    client_ca_file: z.string().min(1).optional(),
  })
  .strict();

export const callerSchema = z
  .object({
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/, "must be 1-64 letters, digits, '.', '_' or '-'"),
    token_sha256: z.string().regex(/^[0-9a-f]{64}$/, "must be the SHA-256 of the credential as 64 lowercase hex digits").optional(),
    mtls_subject: z.string().min(1).max(255).optional(),
    rpcs: z
      .array(
        z.union([z.enum(RPC_NAMES), z.literal("*")], {
          error: `must be one of ${RPC_NAMES.join(", ")}, or "*"`,
        }),
      )
      .min(1, "must list at least one RPC, or '*'"),
    providers: z.array(z.string().min(1)).min(1).optional(),
    resources: z
      .array(z.string().refine((v) => resourceProblem(v) === undefined, "must be an absolute URI without a fragment, a query or credentials"))
      .min(1)
      .optional(),
    rate_limit: z
      .object({ per_second: z.number().positive().max(1_000_000), burst: z.number().int().min(1).max(1_000_000) })
      .strict()
      .optional(),
    user_binding: z.enum(USER_BINDINGS).default("none"),
  })
  .strict();

type RawCaller = z.infer<typeof callerSchema>;
type RawTls = z.infer<typeof tlsSchema>;

/** Problems are thrown as `Error(message)`; the caller wraps them as ConfigError. */
function readFile(baseDir: string, path: string, field: string): Buffer {
  try {
    return readFileSync(resolve(baseDir, path));
  } catch (err) {
    throw new Error(`${field}: cannot read ${path} (${(err as NodeJS.ErrnoException).code ?? "error"})`);
  }
}

export function toTls(raw: RawTls | undefined, baseDir: string): TlsConfig | undefined {
  if (!raw) return undefined;
  const tls = {
    cert: readFile(baseDir, raw.cert_file, "tls.cert_file"),
    key: readFile(baseDir, raw.key_file, "tls.key_file"),
    clientCa: raw.client_ca_file ? readFile(baseDir, raw.client_ca_file, "tls.client_ca_file") : undefined,
  };
  checkTlsMaterial(tls);
  return tls;
}

/**
 * The certificate and CA parse and the key belongs to the certificate: a
 * listener handed anything else would refuse every handshake (and a reload
 * must find out before it swaps the material in). Messages name the field,
 * never the key.
 */
function checkTlsMaterial(tls: TlsConfig): void {
  let cert: X509Certificate;
  try {
    cert = new X509Certificate(tls.cert);
  } catch {
    throw new Error("tls.cert_file: not a PEM certificate");
  }
  let key: ReturnType<typeof createPrivateKey>;
  try {
    key = createPrivateKey(tls.key);
  } catch {
    throw new Error("tls.key_file: not an unencrypted PEM private key");
  }
  if (!cert.checkPrivateKey(key)) throw new Error("tls.key_file: the key does not match the certificate in tls.cert_file");
  if (tls.clientCa) {
    try {
      new X509Certificate(tls.clientCa);
    } catch {
      throw new Error("tls.client_ca_file: not a PEM certificate");
    }
  }
}

export function toCallers(
  raw: RawCaller[],
  tls: TlsConfig | undefined,
  providerIds: ReadonlySet<string>,
  userAssertion?: UserAssertionConfig,
): CallerConfig[] {
  const names = new Set<string>();
  const digests = new Set<string>();
  const subjects = new Set<string>();
  return raw.map((c, i) => {
    const where = `callers[${i}]`;
    if (names.has(c.name)) throw new Error(`${where}.name: duplicate caller name "${c.name}"`);
    names.add(c.name);
    if (!c.token_sha256 && !c.mtls_subject) {
      throw new Error(`${where}: needs token_sha256 (bearer credential) or mtls_subject (client certificate)`);
    }
    if (c.token_sha256) {
      if (digests.has(c.token_sha256)) throw new Error(`${where}.token_sha256: the same credential is given to two callers`);
      digests.add(c.token_sha256);
    }
    if (c.mtls_subject && !tls?.clientCa) {
      throw new Error(`${where}.mtls_subject: needs tls.client_ca_file, to verify client certificates`);
    }
    if (c.mtls_subject) {
      // Certificate names compare case-insensitively: two callers must not share one.
      const key = c.mtls_subject.toLowerCase();
      if (subjects.has(key)) throw new Error(`${where}.mtls_subject: "${c.mtls_subject}" is already another caller's`);
      subjects.add(key);
    }
    if (c.user_binding === "assertion" && !userAssertion) {
      throw new Error(`${where}.user_binding: "assertion" needs user_assertion (issuer, jwks_uri or jwks_file, audience)`);
    }
    for (const [j, p] of (c.providers ?? []).entries()) {
      if (!providerIds.has(p)) throw new Error(`${where}.providers[${j}]: "${p}" is not a configured provider`);
    }
    return {
      name: c.name,
      tokenSha256: c.token_sha256 ? Buffer.from(c.token_sha256, "hex") : undefined,
      mtlsSubject: c.mtls_subject,
      rpcs: c.rpcs.includes("*") ? undefined : new Set(c.rpcs.filter((r): r is RpcName => r !== "*")),
      providers: c.providers ? new Set(c.providers) : undefined,
      resources: c.resources ? new Set(c.resources) : undefined,
      rateLimit: c.rate_limit ? { perSecond: c.rate_limit.per_second, burst: c.rate_limit.burst } : undefined,
      userBinding: c.user_binding,
    };
  });
}

/**
 * The secure-default rules for the listening address: without callers, only
 * loopback; with callers on a network address, TLS (unless the operator says
 * a mesh or sidecar provides it).
 */
export function checkExposure(opts: {
  /** The variable that names the address, for the message. */
  variable?: string;
  loopback: boolean;
  callers: number;
  tls: boolean;
  insecurePlaintext: boolean;
}): void {
  if (opts.loopback) return;
  const variable = opts.variable ?? "TOKEN_SERVICE_ADDR";
  if (opts.callers === 0) {
    throw new Error(
      `${variable}: a non-loopback address needs callers (anyone who can connect could otherwise fetch any user's token); ` +
        "configure callers, or listen on 127.0.0.1",
    );
  }
  if (!opts.tls && !opts.insecurePlaintext) {
    throw new Error(
      `${variable}: a non-loopback address needs tls (credentials and tokens would cross the network in clear); ` +
        "configure tls, or set insecure_plaintext: true when a mesh or sidecar terminates TLS in front of the service",
    );
  }
}
