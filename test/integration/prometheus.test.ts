import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import net from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { parse as parseYaml, stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { codeName } from "../../src/rpc/errors.js";
import { failure } from "../helpers/failure.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startPostgres, type TestPostgres } from "../helpers/postgres.js";
import { expressionUse, metricFamilies, type ExpressionUse } from "../helpers/promql.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";
import { command, requireTools } from "../helpers/tools.js";
import { WebhookReceiver } from "../helpers/webhook-receiver.js";

/**
 * The alert rules and the dashboard against the real thing: Debian's
 * Prometheus (2.42) scrapes a live service's admin port every second and
 * evaluates deploy/prometheus/alerts.yaml. The series the rules and the
 * dashboard read are derived from their expressions, so this test follows
 * them as they change.
 */

const root = new URL("../..", import.meta.url).pathname;
const RULES = join(root, "deploy/prometheus/alerts.yaml");
const DASHBOARD = join(root, "deploy/grafana/token-service.json");
const PROMETHEUS = process.env.PROMETHEUS_BIN ?? "prometheus";
const NEEDS = requireTools("prometheus.test.ts", [command(PROMETHEUS, "prometheus")]);
const JOB = "token-service";
/** Prometheus scrapes and evaluates every second; a 2-core machine shared with other tests gets generous waits (tests that wait get a multiple of it). */
const WAIT_MS = 90_000;

interface Named {
  /** Where the expression comes from, for messages. */
  where: string;
  use: ExpressionUse;
}

/** Every expression of alerts.yaml. */
function ruleExpressions(): Named[] {
  const file = parseYaml(readFileSync(RULES, "utf8")) as { groups: Array<{ rules: Array<{ alert?: string; record?: string; expr: string }> }> };
  return file.groups.flatMap((g) => g.rules.map((r) => ({ where: `alert ${r.alert ?? r.record}`, use: expressionUse(r.expr) })));
}

/** Grafana's variables as a query against this one service would have them. */
function withVariables(expr: string): string {
  const out = expr
    .replace(/\$__rate_interval|\$\{__rate_interval\}|\$__interval|\$\{__interval\}|\$__range|\$\{__range\}/g, "1m")
    .replace(/\$job\b|\$\{job\}/g, JOB)
    .replace(/\$instance\b|\$\{instance\}/g, ".*");
  if (out.includes("$")) throw new Error(`a dashboard variable this test does not know: ${expr}`);
  return out;
}

/** Every panel query of the dashboard (labels used in legends count as used), and its variables' label_values queries. */
function dashboardExpressions(): Named[] {
  type Panel = { title?: string; targets?: Array<{ expr?: string; legendFormat?: string }>; panels?: Panel[] };
  const dashboard = JSON.parse(readFileSync(DASHBOARD, "utf8")) as {
    panels: Panel[];
    templating: { list: Array<{ name: string; type: string; definition?: string }> };
  };
  const out: Named[] = [];
  const visit = (p: Panel) => {
    for (const t of p.targets ?? []) {
      if (!t.expr) continue;
      const use = expressionUse(withVariables(t.expr));
      for (const m of (t.legendFormat ?? "").matchAll(/\{\{\s*(\w+)\s*\}\}/g)) use.groupingLabels.push(m[1]!);
      out.push({ where: `panel "${p.title}"`, use });
    }
    for (const child of p.panels ?? []) visit(child);
  };
  for (const p of dashboard.panels) visit(p);
  for (const v of dashboard.templating.list) {
    if (v.type !== "query" || !v.definition) continue;
    const m = /^label_values\((.*),\s*(\w+)\s*\)$/.exec(v.definition.trim());
    if (!m) throw new Error(`variable ${v.name}: only label_values(selector, label) is understood here`);
    const use = expressionUse(withVariables(m[1]!));
    use.groupingLabels.push(m[2]!);
    out.push({ where: `variable ${v.name}`, use });
  }
  return out;
}

async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

/** Polls `probe` until it returns a value other than undefined; fails with `describe()` after `ms`. */
async function waitFor<T>(probe: () => Promise<T | undefined>, describe: () => string, ms = WAIT_MS): Promise<T> {
  const deadline = Date.now() + ms;
  let lastError: unknown;
  for (;;) {
    const value = await probe().catch((err: unknown) => {
      lastError = err;
      return undefined;
    });
    if (value !== undefined) return value;
    if (Date.now() > deadline) throw new Error(`timed out after ${ms} ms: ${describe()}${lastError ? `; last error: ${String(lastError)}` : ""}`);
    await sleep(500);
  }
}

interface PromAlert {
  labels: Record<string, string>;
  annotations: Record<string, string>;
  state: "pending" | "firing";
}

/** A Prometheus server of its own: temporary storage, a free port, stopped on close. */
class TestPrometheus {
  private output = "";
  private constructor(
    readonly url: string,
    private readonly child: ChildProcess,
    private readonly dir: string,
  ) {
    child.stdout!.setEncoding("utf8").on("data", (d: string) => (this.output = (this.output + d).slice(-20_000)));
    child.stderr!.setEncoding("utf8").on("data", (d: string) => (this.output = (this.output + d).slice(-20_000)));
  }

  /**
   * Scrapes `target` as job token-service and loads the rules. To keep the
   * test short, the rules are a copy of alerts.yaml with every `for:`
   * shortened to 2 s (the expressions are unchanged): pending still comes
   * before firing.
   */
  static async start(target: string): Promise<TestPrometheus> {
    const dir = mkdtempSync(join(tmpdir(), "token-service-prometheus-"));
    writeFileSync(join(dir, "alerts.yaml"), readFileSync(RULES, "utf8").replace(/^(\s*)for:\s*\S+\s*$/gm, "$1for: 2s"));
    writeFileSync(
      join(dir, "prometheus.yml"),
      stringify({
        global: { scrape_interval: "1s", scrape_timeout: "1s", evaluation_interval: "1s" },
        rule_files: [join(dir, "alerts.yaml")],
        scrape_configs: [{ job_name: JOB, static_configs: [{ targets: [target] }] }],
      }),
    );
    const port = await freePort();
    const child = spawn(
      PROMETHEUS,
      [
        `--config.file=${join(dir, "prometheus.yml")}`,
        `--storage.tsdb.path=${join(dir, "data")}`,
        `--web.listen-address=127.0.0.1:${port}`,
        "--web.console.templates=/dev/null",
        "--web.console.libraries=/dev/null",
      ],
      { stdio: ["ignore", "pipe", "pipe"] },
    );
    const prom = new TestPrometheus(`http://127.0.0.1:${port}`, child, dir);
    const ready = waitFor(
      async () => ((await fetch(`${prom.url}/-/ready`)).ok ? true : undefined),
      () => `Prometheus did not become ready: ${prom.log()}`,
    );
    const exited = once(child, "exit").then(([code]) => {
      throw new Error(`Prometheus exited (${String(code)}) before it was ready: ${prom.log()}`);
    });
    // Both are handled by the race below; the loser settles later (exited also when close() stops the server).
    ready.catch(() => undefined);
    exited.catch(() => undefined);
    try {
      await Promise.race([ready, exited]);
    } catch (err) {
      await prom.close();
      throw err;
    }
    return prom;
  }

  log(): string {
    return this.output.slice(-3000);
  }

  async api<T>(path: string, params: Record<string, string | string[]> = {}): Promise<T> {
    const query = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) for (const one of [v].flat()) query.append(k, one);
    const res = await fetch(`${this.url}/api/v1/${path}?${query}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== "success") throw new Error(`${path}: ${body.error ?? res.status}`);
    return body.data;
  }

  series(match: string): Promise<Array<Record<string, string>>> {
    return this.api("series", { "match[]": match });
  }

  async alerts(): Promise<PromAlert[]> {
    return (await this.api<{ alerts: PromAlert[] }>("alerts")).alerts;
  }

  async firing(alertname: string, labels: Record<string, string> = {}): Promise<PromAlert | undefined> {
    return (await this.alerts()).find(
      (a) => a.state === "firing" && a.labels.alertname === alertname && Object.entries(labels).every(([k, v]) => a.labels[k] === v),
    );
  }

  async close(): Promise<void> {
    if (this.child.exitCode === null && this.child.signalCode === null) {
      const exited = once(this.child, "exit");
      this.child.kill("SIGTERM");
      const timer = setTimeout(() => this.child.kill("SIGKILL"), 10_000);
      await exited;
      clearTimeout(timer);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

describe("label values the rules and the dashboard name", () => {
  // A value the service never writes makes a matcher silently match nothing (or everything, negated).
  const codes = new Set([codeName(undefined), ...Array.from({ length: 16 }, (_, c) => codeName((c + 1) as Code))]);
  const results: Record<string, Set<string>> = {
    token_service_refresh_total: new Set(["success", "reauth_required", "unavailable", "lease_lost"]),
    token_service_refresh_duration_seconds: new Set(["success", "reauth_required", "unavailable", "lease_lost"]),
  };
  const named = (m: { op: string; value: string }) => (m.op.endsWith("~") ? m.value.split("|") : [m.value]).filter((v) => !v.includes(".") && !v.includes("$"));

  it("names only gRPC codes the service writes (codeName) and refresh results it reports", () => {
    let checked = 0;
    for (const { where, use } of [...ruleExpressions(), ...dashboardExpressions()]) {
      for (const sel of use.selectors) {
        for (const m of sel.matchers) {
          const known = m.name === "code" ? codes : m.name === "result" ? results[sel.metric.replace(/_(bucket|sum|count)$/, "")] : undefined;
          if (!known) continue;
          for (const v of named(m)) {
            checked++;
            expect(known, `${where}: ${m.name} "${v}"`).toContain(v);
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(10);
    expect(codes).toContain("canceled");
  });
});

describe.skipIf(NEEDS.skip)(`alert rules and dashboard on a real Prometheus${NEEDS.suffix}`, () => {
  let provider: TestProvider;
  let svc: TestService;
  let prom: TestPrometheus;
  /** A webhook receiver, so the webhook series exist (a configured webhook has them from the start). */
  let receiver: WebhookReceiver;
  let webhookDir: string;
  /** /metrics as first scraped, before any call or refresh. */
  let firstMetrics = "";
  let stopped = false;
  const used = [...ruleExpressions(), ...dashboardExpressions()];
  /** Values that must never reach a label: tokens, session ids, user ids, the client secret. */
  const secrets: string[] = [];

  beforeAll(async () => {
    provider = await startTestProvider();
    receiver = await WebhookReceiver.start();
    webhookDir = mkdtempSync(join(tmpdir(), "prometheus-webhook-"));
    const webhookSecret = `whsec_${Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 53 + 7) % 256)).toString("base64")}`;
    writeFileSync(join(webhookDir, "crm.secret"), webhookSecret);
    svc = await startService({
      dialect: "sqlite",
      provider,
      // One attempt per refresh: a 500 from the token endpoint is at once a failed refresh.
      yaml: {
        refresh: { max_attempts: 1, retry_base_delay_ms: 1, background: { interval_seconds: 0.5 } },
        outbound: { allow_insecure_http: true, allow_private_networks: true },
        webhooks: [{ id: "crm", url: receiver.url, events: ["*"], secret_file: join(webhookDir, "crm.secret") }],
      },
    });
    firstMetrics = await (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();
    prom = await TestPrometheus.start(`127.0.0.1:${svc.app.adminPort}`);
    secrets.push(provider.clientSecret, webhookSecret.slice("whsec_".length));
  });
  afterAll(async () => {
    await prom?.close();
    if (!stopped) await svc?.close();
    await provider?.close();
    await receiver?.stop();
    rmSync(webhookDir, { recursive: true, force: true });
  });

  it("finds the metrics it reads in the rules and the dashboard", () => {
    const metrics = new Set(used.flatMap((u) => u.use.selectors.map((s) => s.metric)));
    expect(used.filter((u) => u.where.startsWith("alert")).length).toBeGreaterThanOrEqual(9);
    expect(used.filter((u) => u.where.startsWith("panel")).length).toBeGreaterThanOrEqual(15);
    expect(metrics).toContain("token_service_provider_request_duration_seconds_bucket");
    expect(metrics).toContain("token_service_database_up");
    for (const u of used) expect(u.use.selectors.length, `${u.where} reads no series`).toBeGreaterThan(0);
  });

  it("puts every metric a rule or the dashboard uses on /metrics with its # TYPE line, before any sample", () => {
    const types = new Map([...firstMetrics.matchAll(/^# TYPE (\S+) (\S+)$/gm)].map((m) => [m[1]!, m[2]!]));
    const missing = [];
    for (const u of used) {
      for (const s of u.use.selectors) {
        const [name, family] = metricFamilies(s.metric);
        const ok = types.has(name!) || (family !== undefined && ["histogram", "summary"].includes(types.get(family) ?? ""));
        if (!ok) missing.push(`${s.metric} (${u.where})`);
      }
    }
    expect(missing).toEqual([]);
  });

  it("has every series the rules and the dashboard read, with the labels they select and group by, and no secret in a label", async () => {
    // Calls and refreshes of every kind the rules and panels look at.
    const c = svc.client;
    const expiredAt = timestampFromDate(new Date(Date.now() - 1000));
    const store = async (user: string, options: { expiresIn?: number; resources?: string[] } = {}) => {
      const set = await provider.login(user, options.resources ? { resources: options.resources } : undefined);
      const { sessionId } = await c.storeSession({
        userId: user,
        provider: "corp",
        tokens: {
          accessToken: set.access_token,
          refreshToken: set.refresh_token,
          ...(options.expiresIn !== undefined ? { expiresIn: BigInt(options.expiresIn) } : { expiresAt: expiredAt }),
        },
        resources: options.resources ?? [],
      });
      secrets.push(set.access_token, set.refresh_token, sessionId, user);
      return { sessionId, set };
    };
    // A refresh on the caller's path (discovery, then the token endpoint): GetToken ok, then from the cache.
    const fresh = await store("prom-user-refreshed");
    const got = await c.getToken({ userId: "prom-user-refreshed", sessionId: fresh.sessionId });
    secrets.push(got.token);
    await c.getToken({ userId: "prom-user-refreshed", sessionId: fresh.sessionId });
    // NOT_FOUND (another user's session): an answer, not an error.
    expect((await failure(c.getToken({ userId: "prom-user-other", sessionId: fresh.sessionId }))).code).toBe(Code.NotFound);
    // A refresh token the provider no longer honours (used elsewhere, rotation on): REAUTH_REQUIRED.
    const stale = await store("prom-user-reauth");
    expect((await provider.redeem(stale.set.refresh_token)).status).toBe(200);
    expect((await failure(c.getToken({ userId: "prom-user-reauth", sessionId: stale.sessionId }))).reason).toBe("REAUTH_REQUIRED");
    // An audience token (RFC 8707).
    const resource = "https://mcp.prometheus.example.test/mcp";
    const audience = await store("prom-user-audience", { expiresIn: 3600, resources: [resource] });
    secrets.push((await c.getToken({ userId: "prom-user-audience", sessionId: audience.sessionId, resource })).token);
    // The token endpoint answers 500: a failed refresh (result unavailable, provider status "500"). A valid token and a
    // forced refresh, so that the background refresher (every 0.5 s here) cannot take the fault first on a slow machine.
    const broken = await store("prom-user-unavailable", { expiresIn: 3600 });
    provider.faults.push({ kind: "status", status: 500 });
    expect((await failure(c.getToken({ userId: "prom-user-unavailable", sessionId: broken.sessionId, forceRefresh: true }))).reason).toBe(
      "PROVIDER_UNAVAILABLE",
    );
    // A session that comes due within seconds: the background refresher takes it.
    await store("prom-user-background", { expiresIn: 12 });

    const problems = async () => {
      const found: string[] = [];
      for (const u of used) {
        const all: Array<{ metric: string; series: Array<Record<string, string>> }> = [];
        for (const s of u.use.selectors) {
          const series = await prom.series(s.text.includes("{") ? s.text : `${s.text}{job="${JOB}"}`);
          if (series.length === 0) found.push(`${u.where}: no series for ${s.text}`);
          // A label a selector names (even in != or !~) is on every series it reads.
          for (const m of s.matchers) {
            if (series.some((x) => !(m.name in x))) found.push(`${u.where}: ${s.text} has series without label ${m.name}`);
          }
          all.push({ metric: s.metric, series });
        }
        // A label the expression groups, matches or names its legend by is on every series it reads (le: on the buckets).
        for (const label of new Set(u.use.groupingLabels)) {
          for (const { metric, series } of all) {
            if (label === "le" && !metric.endsWith("_bucket")) continue;
            if (series.some((x) => !(label in x))) found.push(`${u.where}: ${metric} has series without label ${label}`);
          }
        }
      }
      return found;
    };
    let last: string[] = [];
    await waitFor(
      async () => {
        last = await problems();
        return last.length === 0 ? true : undefined;
      },
      () => `series missing or without their labels:\n${last.join("\n")}`,
    );

    const everything = JSON.stringify(await prom.series(`{job="${JOB}"}`));
    expect(everything).toContain("token_service_provider_request_duration_seconds_bucket");
    for (const secret of secrets) expect(everything).not.toContain(secret);
  }, WAIT_MS * 2);

  it("evaluates every rule without error on this Prometheus", async () => {
    type Rule = { name: string; health: string; lastError?: string };
    const groups = await waitFor(
      async () => {
        const data = await prom.api<{ groups: Array<{ rules: Rule[] }> }>("rules", { type: "alert" });
        const rules = data.groups.flatMap((g) => g.rules);
        return rules.length > 0 && rules.every((r) => r.health !== "unknown") ? rules : undefined;
      },
      () => "rules were not evaluated",
    );
    expect(groups.filter((r) => r.health !== "ok").map((r) => `${r.name}: ${r.lastError}`)).toEqual([]);
    expect(groups.map((r) => r.name)).toEqual(expect.arrayContaining(ruleExpressions().map((r) => r.where.replace(/^alert /, ""))));
  }, WAIT_MS * 2);

  it("fires TokenServiceRefreshFailing when the provider's token endpoint answers 500", async () => {
    const set = await provider.login("prom-user-failing");
    const { sessionId } = await svc.client.storeSession({
      userId: "prom-user-failing",
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 3600n },
    });
    // Every refresh fails while this runs: callers keep asking, Prometheus keeps scraping and evaluating. Forced
    // refreshes of a valid token, so that the background refresher cannot take a fault first on a slow machine.
    let calls = 0;
    let seen: PromAlert[] = [];
    const alert = await waitFor(
      async () => {
        provider.faults.push({ kind: "status", status: 500 });
        const f = await failure(svc.client.getToken({ userId: "prom-user-failing", sessionId, forceRefresh: true }));
        expect(f.reason).toBe("PROVIDER_UNAVAILABLE");
        calls++;
        seen = await prom.alerts();
        return prom.firing("TokenServiceRefreshFailing", { job: JOB, provider: "corp", result: "unavailable" });
      },
      () => `TokenServiceRefreshFailing did not fire after ${calls} failed refreshes; alerts: ${JSON.stringify(seen)}; prometheus: ${prom.log()}`,
    );
    provider.faults.length = 0;
    expect(alert.labels.severity).toBe("warning");
    expect(alert.annotations.summary).toMatch(/^corp: [\d.]+% of token refreshes fail with unavailable$/);
    expect(alert.annotations.description).toContain("provider corp");
  }, WAIT_MS * 2);

  it("fires TokenServiceNoReplicaServing when the only replica stops", async () => {
    expect(await prom.firing("TokenServiceNoReplicaServing")).toBeUndefined();
    await svc.close();
    stopped = true;
    const alert = await waitFor(() => prom.firing("TokenServiceNoReplicaServing"), () => `no alert; prometheus: ${prom.log()}`);
    expect(alert.labels.severity).toBe("critical");
    expect(alert.annotations.summary).toBe("No token-service replica is serving");
  }, WAIT_MS * 2);
});

describe.skipIf(NEEDS.skip)(`the database alert on a real Prometheus and a PostgreSQL that stops${NEEDS.suffix}`, () => {
  let postgres: TestPostgres;
  let svc: TestService;
  let prom: TestPrometheus;
  const metricsText = async () => (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();

  beforeAll(async () => {
    // A cluster of its own: stopping it must not disturb the other test files' databases.
    postgres = await startPostgres();
    svc = await startService({ dialect: "postgresql", databaseUrl: await createTestDatabase(postgres.url) });
    prom = await TestPrometheus.start(`127.0.0.1:${svc.app.adminPort}`);
  });
  afterAll(async () => {
    await prom?.close();
    await svc?.close();
    await postgres?.destroy();
  });

  it("reports token_service_database_up 0 while PostgreSQL is down, fires TokenServiceDatabaseUnreachable, and recovers", async () => {
    await waitFor(
      async () => ((await prom.series(`token_service_database_up{job="${JOB}"}`)).length > 0 ? true : undefined),
      () => "no token_service_database_up series",
    );
    expect(await metricsText()).toMatch(/^token_service_database_up 1$/m);
    expect(await prom.firing("TokenServiceDatabaseUnreachable")).toBeUndefined();

    await postgres.stopServer();
    await waitFor(async () => (/^token_service_database_up 0$/m.test(await metricsText()) ? true : undefined), () => "the gauge stayed 1");
    const alert = await waitFor(
      () => prom.firing("TokenServiceDatabaseUnreachable", { job: JOB }),
      () => `no alert; prometheus: ${prom.log()}`,
    );
    expect(alert.labels.severity).toBe("critical");
    expect(alert.annotations.summary).toBe(`127.0.0.1:${svc.app.adminPort} cannot reach its database`);

    await postgres.startServer();
    await waitFor(async () => (/^token_service_database_up 1$/m.test(await metricsText()) ? true : undefined), () => "the gauge stayed 0");
    await waitFor(
      async () => ((await prom.firing("TokenServiceDatabaseUnreachable")) === undefined ? true : undefined),
      () => "the alert kept firing after PostgreSQL came back",
    );
  }, WAIT_MS * 5);
});
