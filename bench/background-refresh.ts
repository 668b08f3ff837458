/**
 * Background refresh at scale: S sessions, all recently used, with 5-minute
 * access tokens whose expiries are spread evenly, over R replicas on one
 * PostgreSQL, against a token endpoint that answers each refresh after
 * 200 ms. Nobody calls GetToken: the background refreshers alone must keep
 * every token fresh. Reports refreshes per second, how long before expiry
 * each token was refreshed (p50, p99), tokens that expired unrefreshed,
 * provider calls per token, the database's CPU and transaction rate, and
 * which limit binds; writes BENCHMARKS.md (section background-refresh).
 *
 *   npm run bench:refresh                                    # 5,000 and 50,000 sessions, 3 replicas, 5 minutes each
 *   npm run bench:refresh -- --sessions 5000 --minutes 1     # one quick run (BENCHMARKS.md left alone unless --write)
 *   npm run bench:refresh -- --sessions 50000 --replicas 3 --latency-ms 200 --minutes 5 --write
 *   npm run bench:refresh -- --sessions 5000 --minutes 1 --profile  # replicas under --cpu-prof: where a refresh's CPU goes
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { stringify } from "yaml";
import { generateKeySpec, parseKeyRing } from "../src/crypto/key-ring.js";
import { migrateUp, openOrm } from "../src/db/orm.js";
import { keepAliveFraction } from "../src/refresh/schedule.js";
import { TokenVault } from "../src/sessions/token-vault.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { benchPostgres } from "./database.js";
import { profileTable, summarizeProfiles, type ProfileSummary } from "./profile.js";
import { CORES, loadavg, machineCpuSeconds, processCpu, treeCpuSeconds } from "./proc-stats.js";
import { fmt, machine, percentile, writeSection } from "./report.js";
import { startStandInProvider, type StandInProvider } from "./stand-in-provider.js";

const LIFETIME_S = 300;
/** The defaults' lead: a 60 s margin plus two 2 s scan intervals and a second. */
const LEAD_S = 65;
/** The defaults this benchmark measures (refresh.background.*). */
const CLUSTER_CAP = 64;
const REPLICA_CAP = 32;

export interface ScaleOptions {
  sessions: number;
  replicas: number;
  latencyMs: number;
  minutes: number;
  /** Run the replicas under `node --cpu-prof` and summarize where their CPU went in the measured window. */
  profile?: boolean;
}

export interface ScaleResult extends ScaleOptions {
  windowS: number;
  /** Refreshes the load needs per second: every token once per (lifetime - lead). */
  demandPerS: number;
  refreshesPerS: number;
  leadP50S: number;
  /** 99 % of the tokens were refreshed at least this long before expiry (the 1st percentile of the lead: the late end). */
  leadP99S: number;
  refreshedAfterExpiry: number;
  expiredAtEnd: number;
  callsPerToken: number;
  reused: number;
  meanConcurrent: number;
  /** Live refresh leases of the provider, sampled every second: how full the cluster cap was. */
  meanLeases: number;
  /** How long a lease lasts per refresh (mean leases / refresh rate), against the provider's latency. */
  leaseMsPerRefresh: number;
  maxConcurrent: number;
  dbCpuCores: number;
  dbXactsPerS: number;
  replicaCpuCores: number;
  /** The benchmark process itself: the stand-in provider and the sampling. */
  benchCpuCores: number;
  machineBusyCores: number;
  loadBefore: string;
  loadAfter: string;
  binding: string;
  /** With `profile`: the replicas' CPU in the measured window, by kind of code. */
  cpuProfile?: ProfileSummary;
  /** PostgreSQL statements per refresh in the window (pg_stat_database: transactions; every statement here is its own or part of a claim). */
  dbXactsPerRefresh: number;
}

/** Sessions straight into the database, sealed with the replicas' key, expiries spread evenly over one refresh period. */
async function seed(databaseUrl: string, keys: string, provider: StandInProvider, n: number, t0: number): Promise<void> {
  const vault = new TokenVault(parseKeyRing(keys));
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const cols = [
      "id", "user_id", "provider", "status", "key_id", "access_ct", "refresh_ct", "id_ct", "token_type", "scope",
      "access_expires_at", "access_issued_at", "created_at", "updated_at", "last_used_at", "version", "refresh_at", "keep_alive_at",
    ];
    const BATCH = 500;
    for (let start = 0; start < n; start += BATCH) {
      const values: unknown[] = [];
      const rows: string[] = [];
      for (let i = start; i < Math.min(n, start + BATCH); i++) {
        const id = randomBytes(32).toString("base64url");
        const owner = { id, userId: `user-${i}`, provider: "corp" };
        const sealed = vault.sealAll(owner, { access: `at.${i}.0.${"a".repeat(600)}`, refresh: `rt.${i}.0`, id: undefined });
        // The first refresh is due between 5 s and one period after the start: a steady state from the first second.
        const expires = t0 + (LEAD_S + 5) * 1000 + Math.floor(((i + 0.5) / n) * (LIFETIME_S - LEAD_S) * 1000);
        provider.seed(i, expires);
        const now = new Date(t0);
        const row = [
          id, owner.userId, "corp", "active", sealed.keyId, sealed.accessCt, sealed.refreshCt, null, "Bearer", "",
          new Date(expires), new Date(expires - LIFETIME_S * 1000), now, now, now, 1,
          new Date(expires - LEAD_S * 1000), new Date(t0 + 86_400_000 * (0.7 + 0.25 * keepAliveFraction(id))),
        ];
        rows.push(`(${row.map((_, k) => `$${values.length + k + 1}`).join(", ")})`);
        values.push(...row);
      }
      await client.query(`insert into sessions (${cols.join(", ")}) values ${rows.join(", ")}`, values);
    }
    await client.query("vacuum analyze sessions");
  } finally {
    await client.end();
  }
}

/**
 * Which limit binds. The cap binds when its leases are full and each lease
 * lasts about the provider's latency; when they are full but each lasts much
 * longer, what stretches them (the CPU, or the database) binds; otherwise the
 * resource nearest saturation. When the load is met, nothing binds yet.
 */
function bindingLimit(r: Omit<ScaleResult, "binding">): string {
  const capUse = r.meanLeases / CLUSTER_CAP;
  const cap = `the provider concurrency cap (cluster_max_inflight_per_provider ${CLUSTER_CAP}: ${fmt(r.meanLeases)} leases live on average, ${fmt(r.meanConcurrent)} requests at the provider)`;
  const db = { name: `the database (PostgreSQL at ${fmt(r.dbCpuCores, 2)} of ${CORES} cores)`, use: r.dbCpuCores / CORES };
  const cpu = { name: `the CPU (the machine at ${fmt(r.machineBusyCores, 2)} of ${CORES} cores busy, all processes; load ${r.loadAfter})`, use: r.machineBusyCores / CORES };
  const [top] = [db, cpu].sort((a, b) => b.use - a.use);
  const met = r.refreshedAfterExpiry === 0 && r.expiredAtEnd === 0 && r.refreshesPerS >= 0.95 * r.demandPerS;
  if (met) {
    const nearest = capUse > top!.use ? { name: cap, use: capUse } : top!;
    return `none binds yet (the load is met); nearest: ${nearest.name}, ${fmt(nearest.use * 100, 0)} % used`;
  }
  if (capUse >= 0.9) {
    if (r.leaseMsPerRefresh <= 1.5 * r.latencyMs) return `${cap}, full`;
    return `${top!.name}: the cap's leases are full, but each lasts ${fmt(r.leaseMsPerRefresh, 0)} ms for a ${r.latencyMs} ms provider call, the rest waiting for CPU time`;
  }
  if (top!.use < 0.8) {
    // Nothing is saturated and the cap's leases are not all in use: the replicas do not claim often enough.
    return `the claim rhythm: ${fmt(r.meanLeases)} of the cap's ${CLUSTER_CAP} leases live on average, each ${fmt(r.leaseMsPerRefresh, 0)} ms, while ${top!.name} is ${fmt(top!.use * 100, 0)} % used`;
  }
  return `${top!.name}, ${fmt(top!.use * 100, 0)} % used`;
}

/** One run: a fresh database, seeded, R replicas for `minutes`, then the figures. */
export async function runScale(o: ScaleOptions): Promise<ScaleResult> {
  const dir = mkdtempSync(join(tmpdir(), "token-service-bench-scale-"));
  const server = await benchPostgres();
  const provider = await startStandInProvider({ latencyMs: o.latencyMs, lifetimeSeconds: LIFETIME_S });
  const procs: ServiceProcess[] = [];
  try {
    const databaseUrl = await createTestDatabase(server.url);
    const orm = await openOrm({ kind: "postgresql", url: databaseUrl });
    await migrateUp(orm, { kind: "postgresql", url: databaseUrl });
    await orm.close(true);
    const keys = generateKeySpec("bench");
    const configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      stringify({
        providers: [{ id: "corp", issuer: provider.issuer, client_id: "bench", client_secret: "bench-secret", allow_insecure_http: true }],
        // Defaults everywhere else (interval 2 s, 32 per replica, 64 per provider over the cluster, batches of 200), and
        // the log level of production: every refresh writes its audit line.
        log_level: "info",
      }),
    );
    const t0 = Date.now();
    console.log(`  seeding ${o.sessions} sessions`);
    await seed(databaseUrl, keys, provider, o.sessions, t0);
    const env = { DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: configFile };
    // Every replica that started is stopped in `finally`, even when another failed to start.
    const profileDirs = Array.from({ length: o.replicas }, (_, i) => join(dir, `profile-${i}`));
    const started = await Promise.allSettled(
      Array.from({ length: o.replicas }, (_, i) => spawnService(env, { nodeArgs: o.profile ? ["--cpu-prof", `--cpu-prof-dir=${profileDirs[i]}`] : [] })),
    );
    for (const p of started) if (p.status === "fulfilled") procs.push(p.value);
    const failed = started.find((p) => p.status === "rejected");
    if (failed) throw failed.reason;

    const db = new pg.Client({ connectionString: databaseUrl });
    await db.connect();
    const backend = (await db.query<{ pid: number }>("select pg_backend_pid() as pid")).rows[0]!.pid;
    const postmaster = processCpu(backend)!.ppid;
    const xacts = async () =>
      Number((await db.query<{ x: string }>("select xact_commit + xact_rollback as x from pg_stat_database where datname = current_database()")).rows[0]!.x);
    const replicaCpu = () => procs.reduce((s, p) => s + (processCpu(p.child.pid!)?.seconds ?? 0), 0);
    const sample = async () => ({
      at: Date.now(),
      db: treeCpuSeconds(postmaster),
      xacts: await xacts(),
      replicas: replicaCpu(),
      bench: (process.cpuUsage().user + process.cpuUsage().system) / 1e6,
      machine: machineCpuSeconds(),
    });

    provider.resetStats();
    const loadBefore = loadavg();
    const a = await sample();
    // Live leases of the provider, once a second, on a connection of its own.
    const leases: number[] = [];
    const sampler = new pg.Client({ connectionString: databaseUrl });
    await sampler.connect();
    const timer = setInterval(() => {
      void sampler
        .query<{ n: string }>("select count(*) as n from sessions where provider = 'corp' and lease_until > now()")
        .then((q) => leases.push(Number(q.rows[0]!.n)), () => undefined);
    }, 1000);
    const end = a.at + o.minutes * 60_000;
    while (Date.now() < end) {
      await sleep(Math.min(15_000, end - Date.now()));
      const s = provider.stats;
      const late = s.leadSeconds.filter((l) => l < 0).length;
      console.log(
        `  ${Math.round((Date.now() - a.at) / 1000)} s: ${s.refreshes} refreshes, ${late} after expiry, ${s.reused} reused, in flight max ${s.maxConcurrent}, load ${loadavg()}`,
      );
    }
    clearInterval(timer);
    const b = await sample();
    const loadAfter = loadavg();
    await sampler.end();
    const expiredAtEnd = Number((await db.query<{ n: string }>("select count(*) as n from sessions where access_expires_at < now()")).rows[0]!.n);
    await db.end();
    const windowS = (b.at - a.at) / 1000;
    const s = provider.stats;
    let cpuProfile: ProfileSummary | undefined;
    if (o.profile) {
      // A profile is written on a clean exit; its end is placed on the wall clock when the process exits.
      const stopped = procs.map((p) => p.exited.then(() => Date.now()));
      for (const p of procs) p.kill("SIGTERM");
      const stoppedAt = await Promise.all(stopped);
      const files = profileDirs.map((d, i) => ({ path: join(d, readdirSync(d).find((f) => f.endsWith(".cpuprofile"))!), stoppedAt: stoppedAt[i]! }));
      cpuProfile = summarizeProfiles(files, [[a.at, b.at]]);
    }
    const partial: Omit<ScaleResult, "binding"> = {
      ...o,
      windowS,
      demandPerS: o.sessions / (LIFETIME_S - LEAD_S),
      refreshesPerS: s.refreshes / windowS,
      leadP50S: percentile(s.leadSeconds, 50),
      leadP99S: percentile(s.leadSeconds, 1),
      refreshedAfterExpiry: s.leadSeconds.filter((l) => l < 0).length,
      expiredAtEnd: Math.max(expiredAtEnd, provider.expiredBefore(Date.now())),
      callsPerToken: (s.refreshes + s.reused) / Math.max(1, s.refreshes),
      reused: s.reused,
      meanConcurrent: s.concurrentMs / (windowS * 1000),
      meanLeases: leases.reduce((x, y) => x + y, 0) / Math.max(1, leases.length),
      leaseMsPerRefresh: (1000 * leases.reduce((x, y) => x + y, 0)) / Math.max(1, leases.length) / Math.max(1e-9, s.refreshes / windowS),
      maxConcurrent: s.maxConcurrent,
      dbCpuCores: (b.db - a.db) / windowS,
      dbXactsPerS: (b.xacts - a.xacts) / windowS,
      dbXactsPerRefresh: (b.xacts - a.xacts) / Math.max(1, s.refreshes),
      cpuProfile,
      replicaCpuCores: (b.replicas - a.replicas) / windowS,
      benchCpuCores: (b.bench - a.bench) / windowS,
      machineBusyCores: ((b.machine.busy - a.machine.busy) / (b.machine.total - a.machine.total)) * CORES,
      loadBefore,
      loadAfter,
    };
    return { ...partial, binding: bindingLimit(partial) };
  } finally {
    for (const p of procs) p.kill("SIGTERM");
    await Promise.all(procs.map((p) => Promise.race([p.exited, sleep(5000)])));
    for (const p of procs) p.kill("SIGKILL");
    await provider.close();
    await server.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/** CPU milliseconds the replicas and PostgreSQL spent per refresh. */
function cpuMsPerRefresh(r: ScaleResult): number {
  return ((r.replicaCpuCores + r.dbCpuCores) * 1000) / Math.max(1e-9, r.refreshesPerS);
}

/** The BENCHMARKS.md section for these runs. */
export function scaleMarkdown(results: ScaleResult[]): string {
  const r0 = results[0]!;
  const row = (r: ScaleResult) =>
    `| ${r.sessions.toLocaleString("en-US")} | ${fmt(r.demandPerS)} | **${fmt(r.refreshesPerS)}** | ${fmt(r.leadP50S)} s | ${fmt(r.leadP99S)} s | **${r.refreshedAfterExpiry + r.expiredAtEnd}** | ${fmt(r.callsPerToken, 3)} | ${fmt(r.meanConcurrent)} (max ${r.maxConcurrent}) | ${fmt(r.meanLeases)} of ${CLUSTER_CAP}, ${fmt(r.leaseMsPerRefresh, 0)} ms each | ${fmt(r.dbCpuCores * 100, 0)} % | ${fmt(r.dbXactsPerS, 0)} | ${fmt(r.replicaCpuCores * 100, 0)} % | ${fmt(r.benchCpuCores * 100, 0)} % | ${fmt(cpuMsPerRefresh(r), 1)} ms, ${fmt((cpuMsPerRefresh(r) * r.demandPerS) / 1000, 2)} cores | ${fmt(r.machineBusyCores, 2)} of ${CORES} | ${r.loadBefore} → ${r.loadAfter} |`;
  return `## Background refresh at scale (\`npm run bench:refresh\`)

${machine()}. ${r0.replicas} replicas (separate processes, the defaults: a pass every 2 s, at most ${REPLICA_CAP} refreshes
per provider per replica and ${CLUSTER_CAP} over the cluster, claims of up to 200) on one PostgreSQL, each run
${r0.minutes} min. Every session is recently used and has a ${LIFETIME_S / 60}-minute access token, the expiries spread
evenly; nobody calls GetToken, so the background refreshers alone keep the tokens fresh. The provider is a stand-in
token endpoint (bench/stand-in-provider.ts) that answers each refresh after ${r0.latencyMs} ms and rotates the refresh
token: oidc-provider itself would take a core at these rates on a machine that has ${CORES}.
The machine is shared: the load averages before and after each run are given, and figures from a quiet machine
may differ.

| sessions | refreshes/s needed | refreshes/s | before expiry, p50 | before expiry, p99 | tokens expired unrefreshed | provider calls per token | in flight at the provider, mean (max) | live leases (mean), time per refresh | PostgreSQL CPU (of one core) | PostgreSQL transactions/s | replicas' CPU (of one core) | stand-in provider's CPU | CPU per refresh (replicas + PostgreSQL), and for the rate needed | machine busy (cores, all processes) | load average before → after |
|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|
${results.map(row).join("\n")}

"Before expiry" is how long the replaced access token still had when its refresh reached the provider (the lead is
${LEAD_S} s: the 60 s margin plus two scan intervals and a second); "p99" is the late end: 99 % of the tokens were
refreshed at least that long before they expired.
"Tokens expired unrefreshed" counts refreshes that came after the token's expiry plus sessions whose token was
expired at the end. "Provider calls per token" is calls over tokens refreshed (1.000: no token refreshed twice; a
second call with a rotated refresh token would count, and be refused). "Live leases" is how full the cluster cap was
(sampled every second): a lease lasts from the claim to the new tokens stored, so "time per refresh" beyond the
provider's ${r0.latencyMs} ms is the replicas' own work and their wait for CPU time and the database. "CPU per
refresh" is what the replicas and PostgreSQL spent per refresh made, and what the rate needed would take at that
cost: the cores a quiet machine must have free for the load to hold.

Which limit binds:
${results.map((r) => `- ${r.sessions.toLocaleString("en-US")} sessions: ${r.binding}.`).join("\n")}

The provider cap alone allows ${CLUSTER_CAP} / ${fmt(r0.latencyMs / 1000, 1)} s = ${fmt(CLUSTER_CAP / (r0.latencyMs / 1000), 0)} refreshes/s at this latency;
raise \`cluster_max_inflight_per_provider\` (and \`max_inflight_per_provider\`, ${REPLICA_CAP} per replica) for more, within
what the provider allows.
`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { values } = parseArgs({
    options: {
      sessions: { type: "string" },
      minutes: { type: "string", default: "5" },
      replicas: { type: "string", default: "3" },
      "latency-ms": { type: "string", default: "200" },
      write: { type: "boolean", default: false },
      profile: { type: "boolean", default: false },
    },
  });
  const scenarios = values.sessions ? values.sessions.split(",").map(Number) : [5000, 50_000];
  const results: ScaleResult[] = [];
  for (const sessions of scenarios) {
    const o = { sessions, minutes: Number(values.minutes), replicas: Number(values.replicas), latencyMs: Number(values["latency-ms"]), profile: values.profile };
    console.log(`\n== background refresh: ${sessions} sessions over ${o.replicas} replicas, ${o.latencyMs} ms provider latency, ${o.minutes} min (load ${loadavg()})`);
    const r = await runScale(o);
    console.log(
      `  ${fmt(r.refreshesPerS)} refreshes/s (needed ${fmt(r.demandPerS)}), ${r.refreshedAfterExpiry + r.expiredAtEnd} expired unrefreshed; ` +
        `CPU per refresh ${fmt(cpuMsPerRefresh(r), 2)} ms (replicas ${fmt((r.replicaCpuCores * 1000) / r.refreshesPerS, 2)}, PostgreSQL ${fmt((r.dbCpuCores * 1000) / r.refreshesPerS, 2)}), ` +
        `${fmt(r.dbXactsPerRefresh, 2)} transactions per refresh; binding: ${r.binding}`,
    );
    if (r.cpuProfile) {
      const per = (ms: number) => fmt((ms * 1000) / Math.max(1, r.refreshesPerS * r.windowS), 0);
      console.log(`  replicas' CPU profile, µs per refresh:\n${profileTable(r.cpuProfile)}`);
      console.log(r.cpuProfile.categories.map(([n, ms]) => `  ${per(ms)} µs ${n}`).join("\n"));
      console.log(r.cpuProfile.functions.slice(0, 25).map(([n, ms]) => `  ${per(ms)} µs ${n}`).join("\n"));
    }
    results.push(r);
  }
  const markdown = scaleMarkdown(results);
  console.log(`\nresults: ${JSON.stringify(results)}\n\n${markdown}`);
  if (!values.sessions || values.write) {
    writeSection("background-refresh", markdown);
    console.log("written to BENCHMARKS.md");
  }
}
