import { X509Certificate } from "node:crypto";
import { isDeepStrictEqual } from "node:util";
import type { CallerConfig, Config, ProviderConfig, TlsConfig } from "../config.js";

/** What a reload adds, removes and changes in a list of named things. */
export interface NameChanges {
  added: string[];
  removed: string[];
  changed: string[];
}

/** A certificate as the log shows it: public facts only. */
export interface CertificateSummary {
  subject: string;
  serial: string;
  sha256: string;
  notAfter: string;
}

/** What applying a newly loaded configuration would do. */
export interface ReloadPlan {
  /** The configuration in effect afterwards: the new file's reloadable settings, the running values of the rest. */
  config: Config;
  callers: NameChanges;
  /** Whether user_assertion changed (the callers' directory is rebuilt with it). */
  userAssertion: boolean;
  providers: NameChanges;
  logLevel: { from: string; to: string } | undefined;
  /** Whether the outbound policy changed. */
  outbound: boolean;
  /** Forwarding targets added, removed and changed. */
  forward: NameChanges;
  /** Whether anything of forwarding changed: its targets or forward_settings. */
  forwardChanged: boolean;
  /** The webhooks added, removed and changed, and whether a setting of `webhooks:` (not a list entry) changed. */
  webhooks: NameChanges & { settings: boolean };
  /** The listener's new TLS material, when it changed. */
  tls: { material: TlsConfig; certificate: CertificateSummary; clientCaChanged: boolean } | undefined;
  /** Settings that differ in the new configuration but only take effect on a restart; they keep their running values. */
  needsRestart: string[];
  /** Whether anything takes effect. */
  changed: boolean;
}

/** Config fields a reload applies; every other field needs a restart. */
const RELOADABLE: ReadonlySet<string> = new Set(["callers", "userAssertion", "providers", "tls", "logLevel", "files", "outbound", "forward", "webhooks"]);

/** How operators know the settings that need a restart (environment variables or YAML keys). */
const SETTING_NAMES: Readonly<Record<string, string>> = {
  host: "TOKEN_SERVICE_ADDR",
  port: "TOKEN_SERVICE_ADDR",
  http: "TOKEN_SERVICE_HTTP_ADDR",
  admin: "TOKEN_SERVICE_ADMIN_ADDR",
  database: "DATABASE_URL",
  encryptionKeys: "TOKEN_SERVICE_ENCRYPTION_KEYS",
  configFile: "TOKEN_SERVICE_CONFIG",
  maxMessageBytes: "limits.max_message_bytes",
  shutdownGraceMs: "shutdown_grace_seconds",
  authorization: "authorization",
  refresh: "refresh",
  sweeper: "sweeper",
  cache: "cache",
  reflection: "reflection",
  publicUrl: "public_url",
  clientMetadata: "client_metadata",
};

function namedChanges<T>(before: T[], after: T[], name: (x: T) => string): NameChanges {
  const old = new Map(before.map((x) => [name(x), x]));
  const now = new Map(after.map((x) => [name(x), x]));
  return {
    added: [...now.keys()].filter((n) => !old.has(n)),
    removed: [...old.keys()].filter((n) => !now.has(n)),
    changed: [...now].filter(([n, x]) => old.has(n) && !isDeepStrictEqual(old.get(n), x)).map(([n]) => n),
  };
}

const isEmpty = (c: NameChanges) => c.added.length + c.removed.length + c.changed.length === 0;

/** Subject, serial, SHA-256 fingerprint and expiry of the first certificate in a PEM bundle. */
export function summarizeCertificate(pem: Buffer): CertificateSummary {
  const cert = new X509Certificate(pem);
  return { subject: cert.subject.replaceAll("\n", ", "), serial: cert.serialNumber, sha256: cert.fingerprint256, notAfter: cert.validTo };
}

/**
 * TLS can be rotated but not switched on or off, and a client CA can be
 * replaced but not added or removed: the listeners fix at start-up whether
 * they speak TLS and whether they ask for client certificates.
 */
function planTls(current: TlsConfig | undefined, next: TlsConfig | undefined, needsRestart: string[]): TlsConfig | undefined {
  if (!current || !next) {
    if (current !== next) needsRestart.push("tls (turning it on or off)");
    return current;
  }
  let clientCa = next.clientCa;
  if ((current.clientCa === undefined) !== (next.clientCa === undefined)) {
    needsRestart.push("tls.client_ca_file (adding or removing it)");
    clientCa = current.clientCa;
  }
  return { cert: next.cert, key: next.key, clientCa };
}

/**
 * Compares the running configuration with a newly loaded (and fully
 * validated) one: what a reload changes, and what it must leave for a
 * restart. Pure: applies nothing.
 */
export function planReload(current: Config, next: Config): ReloadPlan {
  const needsRestart: string[] = [];
  const tls = planTls(current.tls, next.tls, needsRestart);
  for (const key of new Set([...Object.keys(current), ...Object.keys(next)])) {
    if (RELOADABLE.has(key)) continue;
    const a = (current as unknown as Record<string, unknown>)[key];
    const b = (next as unknown as Record<string, unknown>)[key];
    const name = SETTING_NAMES[key] ?? key;
    if (!isDeepStrictEqual(a, b) && !needsRestart.includes(name)) needsRestart.push(name);
  }
  // An empty list turns caller authentication off: one mistaken edit must not open the service to everyone.
  let nextCallers = next.callers;
  if (current.callers.length > 0 && next.callers.length === 0) {
    needsRestart.push("callers (removing every caller turns caller authentication off)");
    nextCallers = current.callers;
  }
  const callers = namedChanges<CallerConfig>(current.callers, nextCallers, (c) => c.name);
  const providers = namedChanges<ProviderConfig>(current.providers, next.providers, (p) => p.id);
  const logLevel = current.logLevel === next.logLevel ? undefined : { from: current.logLevel, to: next.logLevel };
  const tlsChanged = tls !== undefined && !isDeepStrictEqual(tls, current.tls);
  const outbound = !isDeepStrictEqual(current.outbound, next.outbound);
  const forward = namedChanges(current.forward.targets, next.forward.targets, (t) => t.id);
  const forwardChanged = !isEmpty(forward) || current.forward.replayMaxBytes !== next.forward.replayMaxBytes;
  const webhooks = {
    ...namedChanges(current.webhooks.endpoints, next.webhooks.endpoints, (w) => w.id),
    settings: !isDeepStrictEqual({ ...current.webhooks, endpoints: [] }, { ...next.webhooks, endpoints: [] }),
  };
  const webhooksChanged = !isEmpty(webhooks) || webhooks.settings;
  // Kept with the callers it was validated against: running callers bound by assertion keep their issuer.
  const userAssertion = nextCallers === next.callers ? next.userAssertion : current.userAssertion;
  const assertionChanged = !isDeepStrictEqual(userAssertion, current.userAssertion);
  return {
    config: {
      ...current,
      callers: nextCallers,
      userAssertion,
      providers: next.providers,
      logLevel: next.logLevel,
      tls,
      files: next.files,
      outbound: next.outbound,
      forward: next.forward,
      webhooks: next.webhooks,
    },
    callers,
    userAssertion: assertionChanged,
    providers,
    logLevel,
    outbound,
    forward,
    forwardChanged,
    webhooks,
    tls: tlsChanged
      ? { material: tls, certificate: summarizeCertificate(tls.cert), clientCaChanged: !isDeepStrictEqual(tls.clientCa, current.tls?.clientCa) }
      : undefined,
    needsRestart,
    changed:
      !isEmpty(callers) || assertionChanged || !isEmpty(providers) || logLevel !== undefined || tlsChanged || outbound || forwardChanged || webhooksChanged,
  };
}
