import { X509Certificate } from "node:crypto";
import type { Writable } from "node:stream";
import { pino } from "pino";
import { resolveKeyRing } from "../crypto/resolve-key-ring.js";
import { loadConfig, type Config, type ProviderConfig } from "../config.js";
import type { KeyRing } from "../crypto/key-ring.js";
import { describeDatabase, openOrm } from "../db/orm.js";
import { SessionRepository } from "../db/session-repository.js";
import { createLogger } from "../logger.js";
import { OidcProviderClient } from "../providers/provider-client.js";

type Verdict = "ok" | "WARN" | "FAIL";

/** Clock skew against a provider beyond which tokens' iat/exp checks start to bite. */
const SKEW_WARN_S = 5;
const SKEW_FAIL_S = 60;

class Report {
  failed = 0;
  warned = 0;
  constructor(private readonly out: Writable) {}
  line(verdict: Verdict, check: string, detail: string): void {
    if (verdict === "FAIL") this.failed++;
    if (verdict === "WARN") this.warned++;
    this.out.write(`${verdict.padEnd(4)}  ${check.padEnd(22)}  ${detail}\n`);
  }
}

function firstLine(err: unknown): string {
  return (err instanceof Error ? err.message : String(err)).split("\n")[0]!;
}

async function checkDatabase(config: Config, ring: KeyRing | undefined, r: Report): Promise<void> {
  const where = describeDatabase(config.database);
  const orm = await openOrm(config.database).catch((err: unknown) => {
    r.line("FAIL", "database", `${where}: ${firstLine(err)}`);
    return undefined;
  });
  if (!orm) return;
  try {
    const started = Date.now();
    const check = await orm.checkConnection();
    if (!check.ok) {
      r.line("FAIL", "database", `${where}: ${check.reason.split("\n")[0]}`);
      return;
    }
    r.line("ok", "database", `${where}, answered in ${Date.now() - started} ms`);
    const pending = await orm.getMigrator().getPendingMigrations();
    r.line(
      "ok",
      "migrations",
      pending.length === 0 ? "up to date" : `${pending.length} pending (applied at start-up, or by \`migrate up\`)`,
    );
    if (pending.length > 0 || !ring) return;
    const counts = await new SessionRepository(orm, config.database.kind).countByKey();
    const missing = counts.filter((c) => !ring.get(c.keyId));
    const total = counts.reduce((n, c) => n + c.count, 0);
    if (missing.length > 0) {
      r.line("FAIL", "session keys", `${missing.map((m) => `${m.count} under ${m.keyId}`).join(", ")}: key not configured`);
    } else {
      const old = counts.filter((c) => c.keyId !== ring.primary.id);
      r.line(
        "ok",
        "session keys",
        `${total} sessions, all readable${old.length ? `; ${old.reduce((n, c) => n + c.count, 0)} under older keys (keys rotate)` : ""}`,
      );
    }
  } catch (err) {
    r.line("FAIL", "database", `${where}: ${firstLine(err)}`);
  } finally {
    await orm.close(true);
  }
}

async function checkProvider(config: Config, p: ProviderConfig, r: Report): Promise<void> {
  const logger = createLogger("silent");
  const client = new OidcProviderClient(p, config.refresh, logger);
  const name = `provider ${p.id}`;
  try {
    const started = Date.now();
    const metadata = await client.metadata({ deadline: Date.now() + config.refresh.providerTimeoutMs });
    const how = p.tokenEndpoint ? "configured endpoints" : "discovery";
    r.line("ok", name, `${how} in ${Date.now() - started} ms; token endpoint ${metadata.token_endpoint}`);
    if (!metadata.revocation_endpoint) {
      r.line("WARN", `${name} revocation`, "no revocation endpoint: RevokeSession only deletes here");
    }
    // Clock skew, from the Date header of a cheap request to the provider.
    const url = p.tokenEndpoint ?? new URL(".well-known/openid-configuration", p.issuer.endsWith("/") ? p.issuer : `${p.issuer}/`).href;
    const sent = Date.now();
    const res = await fetch(url, { method: p.tokenEndpoint ? "HEAD" : "GET", signal: AbortSignal.timeout(config.refresh.providerTimeoutMs) });
    await res.body?.cancel();
    const date = res.headers.get("date");
    if (!date) {
      r.line("WARN", `${name} clock`, "the provider sent no Date header: skew unknown");
      return;
    }
    const midpoint = (sent + Date.now()) / 2;
    const skew = (Date.parse(date) - midpoint) / 1000;
    const verdict: Verdict = Math.abs(skew) > SKEW_FAIL_S ? "FAIL" : Math.abs(skew) > SKEW_WARN_S ? "WARN" : "ok";
    r.line(verdict, `${name} clock`, `skew ${skew >= 0 ? "+" : ""}${skew.toFixed(1)} s (HTTP dates have 1 s resolution)`);
  } catch (err) {
    r.line("FAIL", name, `unreachable or misconfigured: ${firstLine(err)}`);
  }
}

function checkTls(config: Config, r: Report): void {
  if (!config.tls) {
    r.line("ok", "tls", `off; listening on ${config.host} (${config.callers.length ? "callers configured" : "no callers: loopback only"})`);
    return;
  }
  // Loading the configuration already checked that the certificate and key parse and belong together.
  const cert = new X509Certificate(config.tls.cert);
  const days = (Date.parse(cert.validTo) - Date.now()) / 86_400_000;
  const verdict: Verdict = days < 0 ? "FAIL" : days < 14 ? "WARN" : "ok";
  r.line(verdict, "tls", `certificate ${cert.subject.replaceAll("\n", ", ")}, expires ${cert.validTo} (${Math.floor(days)} days)`);
}

/** `doctor`: checks the configuration, database, keys, providers and clocks; one verdict per line. */
export async function doctorCommand(env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  const r = new Report(out);
  let config: Config;
  try {
    config = loadConfig(env);
  } catch (err) {
    r.line("FAIL", "config", firstLine(err));
    return 1;
  }
  r.line(
    "ok",
    "config",
    `${config.configFile ?? "no config file"}: ${config.providers.length} provider(s), ${config.callers.length} caller(s)`,
  );
  let ring: KeyRing | undefined;
  try {
    ring = resolveKeyRing(config, createLogger("warn", pino.destination({ dest: 2, sync: true })));
    r.line("ok", "encryption keys", `primary ${ring.primary.id}; ${ring.ids().length} key(s) configured`);
  } catch (err) {
    r.line("FAIL", "encryption keys", firstLine(err));
  }
  checkTls(config, r);
  await checkDatabase(config, ring, r);
  if (config.providers.length === 0) r.line("WARN", "providers", "none configured: StoreSession refuses everything");
  for (const p of config.providers) await checkProvider(config, p, r);
  out.write(
    r.failed > 0
      ? `\n${r.failed} check(s) failed${r.warned ? `, ${r.warned} warning(s)` : ""}\n`
      : `\nall checks passed${r.warned ? ` (${r.warned} warning(s))` : ""}\n`,
  );
  return r.failed > 0 ? 1 : 0;
}
