/**
 * `npm run bench`: the performance benchmark. Writes BENCHMARKS.md.
 *
 * Every figure comes from the load generator (bench/loadgen.ts) running in its
 * own process against the built service running in its own process; every
 * answer is checked by its grpc-status. Ratios are taken within one run.
 *
 *   npm run bench                     # everything (about 10 minutes)
 *   BENCH_QUICK=1 npm run bench       # shorter runs, 100k sessions at most (a smoke test)
 */
import { randomBytes } from "node:crypto";
import { readFileSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { fromBinary } from "@bufbuild/protobuf";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { stringify } from "yaml";
import { GetTokenRequestSchema, StoreSessionRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import { managedEntry, startEnterpriseIdp, startMcpAuthorizationServer, type McpAuthorizationServer } from "../test/helpers/id-jag.js";
import { type TestProvider } from "../test/helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { benchPostgres, type BenchPostgres } from "./database.js";
import type { LoadResult, LoadSpec } from "./loadgen.js";
import { runRefreshStorm } from "./refresh-storm.js";
import { runTracingBench } from "./tracing.js";
import { runForwardBench } from "./forward.js";
import { runHeapBench } from "./heap-settings.js";
import { loadavg } from "./proc-stats.js";
import { insertSessions, runRandomMix, type RandomMixResult } from "./random-sessions.js";
import { NODE_HEAP_ARGS } from "../test/helpers/process.js";
import { fmt, machine, median, writeSection } from "./report.js";
import { grpcFrame, runLoadProcess } from "./run-load.js";
import {
  bodies,
  commandOf,
  paths,
  peakRssMiB,
  profileComparison,
  profileRuns,
  profileShare,
  REQUESTS,
  RPC_STACK_CATEGORIES,
  runRounds,
  startBare,
  summarize,
  tempDir,
  type HotPathResult,
  type Measurement,
  type Server,
  type Target,
} from "./hot-path.js";
import type { ProfileSummary } from "./profile.js";
import type { ChildProcess } from "node:child_process";
import { once } from "node:events";

const QUICK = process.env.BENCH_QUICK === "1";
const DURATION_MS = QUICK ? 3000 : 8000;
const WARMUP_MS = QUICK ? 1000 : 2000;
/** Rounds of the sustained loadgen runs (NOT_FOUND timing, scale). */
const ROUNDS = QUICK ? 1 : 3;
/** Paired h2load rounds of the hot path. */
const HOT_ROUNDS = Number(process.env.BENCH_HOT_ROUNDS ?? (QUICK ? 1 : 7));
/** 64 concurrent streams: 4 connections × 16 streams. */
const CONNECTIONS = 4;
const STREAMS = 16;
const SEEDED = 1000;

const GET_TOKEN = "/tokenservice.v1.TokenService/GetToken";
const GET_TOKEN_METHOD = "tokenservice.v1.TokenService/GetToken";
const STORE = "/tokenservice.v1.TokenService/StoreSession";

const dir = mkdtempSync(join(tmpdir(), "token-service-bench-"));
const keys = generateKeySpec("bench");

function rssKiB(pid: number, field: "VmRSS" | "VmHWM" = "VmRSS"): number {
  const m = new RegExp(`${field}:\\s+(\\d+) kB`).exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) : NaN;
}

async function startBenchService(
  provider: TestProvider,
  name: string,
  databaseUrl: string,
  extra: Record<string, unknown> = {},
  nodeArgs: string[] = [],
): Promise<ServiceProcess> {
  const config = join(dir, `${name}.yaml`);
  writeFileSync(
    config,
    stringify({
      providers: [provider.configEntry()],
      // Quiet, but still one line per RPC would be "info": benchmark the service as deployed.
      log_level: "info",
      ...extra,
    }),
  );
  // stdout (one JSON line per RPC) is drained by the helper, as a log shipper would. Both listeners are on.
  return spawnService({ DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config }, { nodeArgs });
}

/** Stores `n` sessions with realistic token sizes; returns GetToken frames for them. */
async function seed(svc: ServiceProcess, n: number, prefix: string): Promise<string[]> {
  const client = connectGrpcClient(svc.url);
  const frames: string[] = [];
  const access = (i: number) => `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify({ sub: `${prefix}${i}`, pad: "x".repeat(600) })).toString("base64url")}.sig`;
  for (let start = 0; start < n; start += 50) {
    const batch = await Promise.all(
      Array.from({ length: Math.min(50, n - start) }, (_, k) => {
        const i = start + k;
        return client
          .storeSession({
            userId: `${prefix}${i}`,
            provider: "corp",
            tokens: { accessToken: access(i), refreshToken: `rt-${i}-${"r".repeat(40)}`, expiresIn: 86_400n },
          })
          .then((r) => grpcFrame(GetTokenRequestSchema, { userId: `${prefix}${i}`, sessionId: r.sessionId }));
      }),
    );
    frames.push(...batch);
  }
  return frames;
}

/** The resource of the audience-token rows: an MCP server's URL (nothing listens there; the provider issues its tokens). */
const AUDIENCE = "https://tools.bench.example/mcp";

/**
 * One real login granted AUDIENCE, stored with it, and its audience token
 * obtained once (a refresh-token grant with resource=); returns the GetToken
 * frame that asks for that audience.
 */
async function seedAudience(svc: ServiceProcess, provider: TestProvider): Promise<string> {
  const client = connectGrpcClient(svc.url);
  const set = await provider.login("hot-audience", { resources: [AUDIENCE] });
  const { sessionId } = await client.storeSession({
    userId: "hot-audience",
    provider: "corp",
    tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: BigInt(set.expires_in) },
    resources: [AUDIENCE],
  });
  const first = await client.getToken({ userId: "hot-audience", sessionId, resource: AUDIENCE });
  if (first.token === set.access_token) throw new Error("the audience token should differ from the session's own token");
  return grpcFrame(GetTokenRequestSchema, { userId: "hot-audience", sessionId, resource: AUDIENCE });
}

/** The resource of the enterprise-managed provider `crm` (nothing listens there; its authorization server issues the tokens). */
const MANAGED = "https://crm.bench.example/mcp";

/**
 * One real IdP login with its ID token, and the token of the
 * enterprise-managed provider `crm` obtained once (an ID-JAG exchange and a
 * JWT bearer grant); returns the GetToken frame that asks `crm` for it with
 * the IdP session's id.
 */
async function seedManaged(svc: ServiceProcess, provider: TestProvider): Promise<string> {
  const client = connectGrpcClient(svc.url);
  const set = await provider.login("hot-managed");
  const { sessionId } = await client.storeSession({
    userId: "hot-managed",
    provider: "corp",
    tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
  });
  const first = await client.getToken({ userId: "hot-managed", provider: "crm" });
  if (first.sessionId !== sessionId) throw new Error("the enterprise-managed token should come from the IdP session");
  return grpcFrame(GetTokenRequestSchema, { userId: "hot-managed", sessionId, provider: "crm" });
}

/** Sustained load on one path; samples the service's RSS meanwhile. */
async function load(svc: ServiceProcess, path: string, frames: string | string[], opts: Partial<LoadSpec> = {}) {
  let peak = 0;
  const sampler = setInterval(() => (peak = Math.max(peak, rssKiB(svc.child.pid!))), 100);
  try {
    const result = await runLoadProcess({
      mode: "sustained",
      targets: [{ url: svc.url, path, frame: frames }],
      connections: CONNECTIONS,
      concurrency: STREAMS,
      durationMs: DURATION_MS,
      warmupMs: WARMUP_MS,
      ...opts,
    });
    return { ...result, peakRssKiB: peak };
  } finally {
    clearInterval(sampler);
  }
}

/** Failed calls; for the NOT_FOUND runs that is the point, so those read `errors["5"]` instead. */
const errorsOf = (r: LoadResult) => r.requests - r.ok;
const row = (name: string, r: LoadResult) =>
  `| ${name} | ${Math.round(r.throughput)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${r.ok} | ${errorsOf(r)}${errorsOf(r) ? ` (${JSON.stringify(r.errors)})` : ""} |`;

function medianResult(rs: LoadResult[]): LoadResult {
  const pick = (f: (r: LoadResult) => number) => median(rs.map(f));
  return {
    startedAt: Math.min(...rs.map((r) => r.startedAt)),
    requests: rs.reduce((n, r) => n + r.requests, 0),
    ok: rs.reduce((n, r) => n + r.ok, 0),
    errors: Object.assign({}, ...rs.map((r) => r.errors)) as Record<string, number>,
    durationMs: pick((r) => r.durationMs),
    throughput: pick((r) => r.throughput),
    p50Ms: pick((r) => r.p50Ms),
    p99Ms: pick((r) => r.p99Ms),
    maxMs: Math.max(...rs.map((r) => r.maxMs)),
    minMs: Math.min(...rs.map((r) => r.minMs)),
  };
}

/** GetToken for ids that do not exist, then for existing ids with the wrong user. */
async function notFoundTiming(svc: ServiceProcess, frames: string[]): Promise<{ unknown: LoadResult; foreign: LoadResult }> {
  const ids = frames.map((f) => fromBinary(GetTokenRequestSchema, Buffer.from(f, "base64").subarray(5)).sessionId);
  const unknownFrames = ids.map((_, i) =>
    grpcFrame(GetTokenRequestSchema, { userId: `hot-${i}`, sessionId: randomBytes(32).toString("base64url") }),
  );
  const foreignFrames = ids.map((id, i) => grpcFrame(GetTokenRequestSchema, { userId: `hot-${(i + 1) % ids.length}`, sessionId: id }));
  const u: LoadResult[] = [];
  const f: LoadResult[] = [];
  for (let i = 0; i < ROUNDS; i++) {
    u.push(await load(svc, GET_TOKEN, unknownFrames, { connections: 2, concurrency: 8 }));
    f.push(await load(svc, GET_TOKEN, foreignFrames, { connections: 2, concurrency: 8 }));
  }
  const result = { unknown: medianResult(u), foreign: medianResult(f) };
  console.log(`  NOT_FOUND p50: unknown ${fmt(result.unknown.p50Ms, 2)} ms, another user's ${fmt(result.foreign.p50Ms, 2)} ms`);
  return result;
}

/** Filler sessions straight into PostgreSQL, up to `total` rows, then ANALYZE. */
async function fillTo(databaseUrl: string, total: number): Promise<void> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    const { rows } = await client.query<{ n: string }>("select count(*) as n from sessions");
    let have = Number(rows[0]!.n);
    while (have < total) {
      const batch = Math.min(100_000, total - have);
      await client.query(
        `insert into sessions (id, user_id, provider, status, key_id, access_ct, refresh_ct, id_ct, token_type, scope,
           access_expires_at, access_issued_at, id_expires_at, refresh_expires_at, created_at, updated_at, last_used_at,
           version, lease_owner, lease_until, last_error_code, last_error_at, reauth_reason)
         select md5('f' || g) || substr(md5('g' || g), 1, 11), 'filler-' || g, 'corp', 'active', 'bench',
           decode(repeat(md5(g::text), 8), 'hex'), null, null, 'Bearer', '',
           now() + interval '1 day', now(), null, null, now(), now(), now() - interval '30 days',
           1, null, null, null, null, null
         from generate_series($1::bigint, $2::bigint) as g`,
        [have + 1, have + batch],
      );
      have += batch;
      process.stdout.write(`  ${have} rows\r`);
    }
    // VACUUM ANALYZE now, so autovacuum does not run during the measurement.
    await client.query("vacuum analyze sessions");
    process.stdout.write("\n");
  } finally {
    await client.end();
  }
}

/** The hot-path section: each target's medians, the ratios against the limits, the targets, and the CPU profile. */
function hotPathMarkdown(
  targets: Target[],
  medians: Record<string, Measurement>,
  ratio: HotPathResult["ratio"],
  rounds: number,
  peakMiB: number,
  profiles: Record<string, ProfileSummary>,
): string {
  const tput = (m: Measurement) => m.reqPerSec;
  const p99 = (m: Measurement) => m.p99Ms;
  const cpu = (m: Measurement) => m.cpuUsPerCall;
  const vsGrpc = (k: string) => ratio(k, "bareGrpc", tput);
  const rows = targets.map((t) => {
    const m = medians[t.key]!;
    return `| ${t.label} | ${Math.round(m.reqPerSec)} | ${fmt(vsGrpc(t.key), 2)}× | ${fmt(m.p50Ms, 2)} / ${fmt(m.p99Ms, 2)} / ${fmt(m.p999Ms, 2)} | ${fmt(ratio(t.key, "bareGrpc", p99), 2)}× | ${fmt(m.cpuUsPerCall, 0)} | ${fmt(ratio(t.key, "bareGrpc", cpu), 2)}× | ${m.requests - m.succeeded} |`;
  });
  const getToken = vsGrpc("pg");
  const getTokenP99 = ratio("pg", "bareGrpc", p99);
  const health = vsGrpc("health");
  const withResource = ratio("pgResource", "pg", tput);
  const managed = ratio("pgManaged", "pg", tput);
  const met = (ok: boolean) => (ok ? "met" : "**NOT met**");
  const rpcShare = (label: string) => fmt(profileShare(profiles[label]!, (c) => RPC_STACK_CATEGORIES.has(c)), 0);
  const gcShare = (label: string) => fmt(profileShare(profiles[label]!, (c) => c === "garbage collection"), 0);
  const ownShare = (label: string) => fmt(profileShare(profiles[label]!, (c) => c.startsWith("token service")), 0);
  const logShare = (label: string) => fmt(profileShare(profiles[label]!, (c) => c.startsWith("logging")), 0);
  return `## Hot path against the machine's limits

Every row is h2load with the same settings (\`${commandOf(targets[0]!).replace(/ -H .*$/, "")} …\`: 40,000 calls, 4 connections, 16
concurrent streams each), in ${rounds} paired rounds: each round runs every row once, back to back (the order rotates),
after one warm-up run of each; medians over the rounds. Ratios are taken within each round against the bare grpc-js
server's run of that round, then their median is reported. "CPU per call" is the user and system time of the server
process over the run (\`/proc/PID/stat\`), divided by the calls: it moves less than throughput on a shared machine.
The service answered every call with grpc-status 0 (checked on its own \`/metrics\` before and after each run).
GetToken reads one stored session with a 640-byte access token (a fresh token: no refresh); "cache off" reads the database
on every call. "With a resource" asks for a real session's audience token (a JWT from the test provider for one RFC 8707
resource, obtained once before the runs and valid throughout), which the cache holds beside the session. "Enterprise-managed"
asks the provider \`crm\` with the IdP session's id for its token (obtained once before the runs by an ID-JAG exchange and a
JWT bearer grant at two test oidc-providers, valid throughout), held as a derived audience token of that session. Connect JSON runs on the HTTP listener in clear text, so over HTTP/1.1: h2load \`--h1\` with the same
\`-c 4 -m 16\` (16 requests pipelined per connection).

| server and call | req/s | ÷ bare grpc-js | p50 / p99 / p99.9 (ms) | p99 ÷ bare grpc-js | CPU per call (µs) | ÷ bare grpc-js | failed |
|---|---|---|---|---|---|---|---|
${rows.join("\n")}

What the service measured itself over the same runs (its /metrics; event-loop delay from \`perf_hooks.monitorEventLoopDelay\`
through prom-client, 10 ms sampling interval taken off; GC from \`nodejs_gc_duration_seconds\`, which counts every
collection since 2026-12-07: prom-client's own counted one an event-loop turn; a full collection counts twice in the
collections, once for its incremental marking and once for its pause), medians over the rounds:
${["pg", "health", "pgNoCache", "connect"].map((k) => `\`${k}\`: event-loop delay p99 ${fmt(medians[k]!.loopP99Ms! - 10, 1)} ms, max ${fmt(medians[k]!.loopMaxMs! - 10, 1)} ms; GC ${fmt(medians[k]!.gcUsPerCall!, 1)} µs per call (${fmt(medians[k]!.gcPer1000!, 1)} collections per 1,000 calls, ${fmt(medians[k]!.majorPer1000!, 2)} of them full)`).join(";\n")}.
The bare grpc-js server, from its \`--trace-gc\` lines (one a collection): GC ${fmt(medians.bareGrpc!.gcUsPerCall!, 1)} µs per call (${fmt(medians.bareGrpc!.gcPer1000!, 1)} collections per 1,000 calls, ${fmt(medians.bareGrpc!.majorPer1000!, 2)} of them full).

Targets:
- GetToken (PostgreSQL, cache on) at least 0.75× the bare grpc-js server's throughput: ${met(getToken >= 0.75)} (${fmt(getToken, 2)}×).
- Its p99 at most 2× the bare grpc-js server's p99: ${met(getTokenP99 <= 2)} (${fmt(getTokenP99, 2)}×).
- GetToken with a resource at least 0.9× GetToken without one (same service, paired per round): ${met(withResource >= 0.9)}
  (${fmt(withResource, 2)}×; p99 ${fmt(ratio("pgResource", "pg", p99), 2)}×, CPU per call ${fmt(ratio("pgResource", "pg", cpu), 2)}×).
- GetToken at an enterprise-managed provider with its token held at least 0.9× plain GetToken (same service, paired per round): ${met(managed >= 0.9)}
  (${fmt(managed, 2)}×; p99 ${fmt(ratio("pgManaged", "pg", p99), 2)}×, CPU per call ${fmt(ratio("pgManaged", "pg", cpu), 2)}×).
- The service's Health/Check at least 0.9× the bare grpc-js server's throughput: ${met(health >= 0.9)} (${fmt(health, 2)}×).
- Peak RSS under load below 200 MB, with both listeners on: ${met(peakMiB * 2 ** 20 < 200e6)} (**${fmt(peakMiB, 0)} MiB**, the PostgreSQL
  service with the cache on, over all its runs above, Connect JSON included).

### Where the CPU goes

The bare grpc-js server and one service (PostgreSQL, cache on) run once more under \`node --cpu-prof\` (not the timed
runs: the profiler costs a little itself); samples inside each run only, grouped by the file each function comes from
(\`bench/profile.ts\`), in µs of CPU per call:

${profileComparison(profiles, REQUESTS)}

For GetToken over gRPC, ${rpcShare("GetToken (gRPC)")} % of the busy CPU is the RPC stack (grpc-js, protobuf, Node's HTTP/2), ${gcShare("GetToken (gRPC)")} %
garbage collection, ${logShare("GetToken (gRPC)")} % the one JSON log line per call, and ${ownShare("GetToken (gRPC)")} % the service's own code (the chain, the cache
lookup, the answer). The service's Health/Check costs ${fmt((profiles["service Health/Check"]!.busyMs * 1000) / REQUESTS, 1)} µs against the bare server's
${fmt((profiles["bare grpc-js Health/Check"]!.busyMs * 1000) / REQUESTS, 1)} µs: the same library answers, and the rest is the chain (log level check, metrics) and a larger
process's garbage collection.
`;
}

/** The sessions of the random read mix (issue 21, item 3). */
const RANDOM_SESSIONS = 100_000;

/** GetToken cache lookups so far, from the service's /metrics. */
async function cacheLookups(svc: ServiceProcess): Promise<{ hit: number; miss: number }> {
  const text = await (await fetch(`${svc.adminUrl}/metrics`)).text();
  const get = (r: string) => Number(new RegExp(`^token_service_cache_lookups_total\\{result="${r}"\\} (\\d+)`, "m").exec(text)?.[1] ?? 0);
  return { hit: get("hit"), miss: get("miss") };
}

/** The figures of issue 21's hot-path targets, for the table at the top of BENCHMARKS.md. */
interface Glance {
  getToken: number;
  getTokenP99: number;
  health: number;
  pg: Measurement;
  bare: Measurement;
  healthM: Measurement;
  peakMiB: number;
  rounds: number;
  mix?: RandomMixResult;
  scale?: { n: number; p50: number; base: number };
}

function glanceMarkdown(g: Glance): string {
  const met = (ok: boolean) => (ok ? "met" : "**not met**");
  const ms = (m: Measurement) => `${fmt(m.p50Ms, 2)} / ${fmt(m.p99Ms, 2)} / ${fmt(m.p999Ms, 2)} ms`;
  const rows = [
    `| GetToken (PostgreSQL, cache on) ≥ 0.75× the bare grpc-js server | ${fmt(g.getToken, 2)}× (${Math.round(g.pg.reqPerSec)} against ${Math.round(g.bare.reqPerSec)} req/s) | ${met(g.getToken >= 0.75)} |`,
    `| its p99 ≤ 2× the bare server's p99 | ${fmt(g.getTokenP99, 2)}× (p50 / p99 / p99.9: GetToken ${ms(g.pg)}, bare ${ms(g.bare)}) | ${met(g.getTokenP99 <= 2)} |`,
    g.mix
      ? `| GetToken over ${RANDOM_SESSIONS.toLocaleString("en")} random sessions ≥ 0.4× the bare server | ${fmt(g.mix.ratio, 2)}× (${Math.round(g.mix.throughput)} against ${Math.round(g.mix.bareThroughput)} req/s; p99 ${fmt(g.mix.p99Ms, 2)} against ${fmt(g.mix.bareP99Ms, 2)} ms, ${fmt(g.mix.p99Ratio, 2)}×) | ${met(g.mix.ratio >= 0.4)} |`
      : "",
    `| the service's Health/Check ≥ 0.9× the bare server | ${fmt(g.health, 2)}× (${Math.round(g.healthM.reqPerSec)} req/s) | ${met(g.health >= 0.9)} |`,
    `| peak RSS < 200 MB, both listeners on | ${fmt(g.peakMiB, 0)} MiB (${fmt((g.peakMiB * 2 ** 20) / 1e6, 0)} MB), \`${NODE_HEAP_ARGS.join(" ")}\` | ${met(g.peakMiB * 2 ** 20 < 200e6)} |`,
    g.scale
      ? `| flat cost up to ${g.scale.n.toLocaleString("en")} sessions (p50 ≤ 1.2× p50 at 1,000) | ${fmt(g.scale.p50 / g.scale.base, 2)}× (p50 ${fmt(g.scale.p50, 2)} against ${fmt(g.scale.base, 2)} ms) | ${met(g.scale.p50 / g.scale.base <= 1.2)} |`
      : "",
  ].filter((r) => r !== "");
  return `Issue 21, hot path (written by \`${QUICK ? "BENCH_QUICK=1 " : ""}npm run bench\`, ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC, load average
${loadavg()} at the end; medians of ${g.rounds} paired h2load rounds, see the sections below):

| target | measured | |
|---|---|---|
${rows.join("\n")}
`;
}

async function main(): Promise<void> {
  let postgres: BenchPostgres | undefined;
  // Tokens it issues (the audience token of the hot path) outlive the whole run: no refresh inside a measurement.
  // It is also the enterprise IdP of `crm`, whose authorization server's tokens outlive the run too.
  const provider = await startEnterpriseIdp({ clientIdAt: () => "mcp-client", accessTokenTtl: 3600 });
  let crmAs: McpAuthorizationServer | undefined;
  const procs: ServiceProcess[] = [];
  const bares: ChildProcess[] = [];
  const sections: string[] = [];
  const loadAtStart = loadavg();
  console.log(`load average at the start: ${loadAtStart}`);
  try {
    postgres = await benchPostgres();
    const serverUrl = postgres.url;

    // 1 and 3: the hot path against the machine's limits, all with the same h2load settings; peak RSS.
    console.log(`\n== hot path: h2load -n ${REQUESTS} -c 4 -m 16, ${HOT_ROUNDS} paired rounds`);
    const hotDir = tempDir();
    crmAs = await startMcpAuthorizationServer(provider.issuer, { accessTokenTtl: 3600 });
    const services = {
      pg: await startBenchService(provider, "hot-pg", await createTestDatabase(serverUrl), { providers: [provider.configEntry(), managedEntry(crmAs, MANAGED)] }),
      pgNoCache: await startBenchService(provider, "hot-pg-nocache", await createTestDatabase(serverUrl), { cache: { enabled: false } }),
      sqlite: await startBenchService(provider, "hot-sqlite", `sqlite:${join(hotDir, "hot.db")}`),
    };
    procs.push(...Object.values(services));
    // Each kept for the finally as soon as it runs: the second may fail to start.
    const bareHttp2 = await startBare("http2");
    bares.push(bareHttp2.child);
    const bareGrpc = await startBare("grpc-js");
    bares.push(bareGrpc.child);
    const asServer = (name: string, p: ServiceProcess): Server => ({ name, pid: p.child.pid!, url: p.url, httpUrl: p.httpUrl, adminUrl: p.adminUrl });
    const sessionOf = async (p: ServiceProcess) => (await seed(p, 1, "hot-"))[0]!;
    const frames = { pg: await sessionOf(services.pg), pgNoCache: await sessionOf(services.pgNoCache), sqlite: await sessionOf(services.sqlite) };
    const getTokenBody = (frame: string) => Buffer.from(frame, "base64");
    const connectJsonBody = (frame: string) => {
      const req = fromBinary(GetTokenRequestSchema, Buffer.from(frame, "base64").subarray(5));
      return Buffer.from(JSON.stringify({ userId: req.userId, sessionId: req.sessionId }));
    };
    const svc = (p: ServiceProcess, name: string) => asServer(name, p);
    const targets: Target[] = [
      { key: "bareHttp2", label: "bare node:http2 responder", server: bareHttp2, path: paths.health, body: bodies.empty },
      { key: "bareGrpc", label: "bare @grpc/grpc-js server, Health/Check", server: bareGrpc, path: paths.health, body: bodies.empty },
      { key: "health", label: "service Health/Check", server: svc(services.pg, "pg"), path: paths.health, body: bodies.empty, metricsMethod: "grpc.health.v1.Health/Check" },
      { key: "pg", label: "GetToken, PostgreSQL, cache on", server: svc(services.pg, "pg"), path: paths.getToken, body: getTokenBody(frames.pg), metricsMethod: GET_TOKEN_METHOD },
      { key: "pgNoCache", label: "GetToken, PostgreSQL, cache off", server: svc(services.pgNoCache, "pg-nocache"), path: paths.getToken, body: getTokenBody(frames.pgNoCache), metricsMethod: GET_TOKEN_METHOD },
      { key: "sqlite", label: "GetToken, SQLite, cache on", server: svc(services.sqlite, "sqlite"), path: paths.getToken, body: getTokenBody(frames.sqlite), metricsMethod: GET_TOKEN_METHOD },
      { key: "pgResource", label: "GetToken with a resource (audience token), PostgreSQL, cache on", server: svc(services.pg, "pg"), path: paths.getToken, body: getTokenBody(await seedAudience(services.pg, provider)), metricsMethod: GET_TOKEN_METHOD },
      { key: "pgManaged", label: "GetToken at an enterprise-managed provider (ID-JAG token held), PostgreSQL, cache on", server: svc(services.pg, "pg"), path: paths.getToken, body: getTokenBody(await seedManaged(services.pg, provider)), metricsMethod: GET_TOKEN_METHOD },
      { key: "connect", label: "GetToken, Connect JSON on the HTTP listener (HTTP/1.1), PostgreSQL, cache on", server: svc(services.pg, "pg"), path: paths.getToken, body: connectJsonBody(frames.pg), metricsMethod: GET_TOKEN_METHOD, connectJson: true },
    ];
    const byKey = (key: string) => targets.find((t) => t.key === key)!;
    const rounds = await runRounds(targets, HOT_ROUNDS, console.log);
    const { medians, ratio } = summarize(rounds);
    const peak = peakRssMiB(services.pg.child.pid!);
    for (const p of [...Object.values(services)]) {
      p.kill("SIGTERM");
      await p.exited;
    }
    for (const b of bares.splice(0)) b.kill("SIGKILL");

    // Where the CPU goes: the same runs once more on profiled processes.
    console.log("\n== hot path: CPU profiles");
    const profDirs = { bare: join(hotDir, "prof-bare"), svc: join(hotDir, "prof-svc") };
    const profBare = await startBare("grpc-js", profDirs.bare);
    bares.push(profBare.child);
    const profSvc = await startBenchService(provider, "hot-prof", await createTestDatabase(serverUrl), {}, ["--cpu-prof", `--cpu-prof-dir=${profDirs.svc}`]);
    procs.push(profSvc);
    const profFrame = await sessionOf(profSvc);
    const profServer = svc(profSvc, "profiled");
    const profiles = await profileRuns(
      [
        { label: "bare grpc-js Health/Check", target: { ...byKey("bareGrpc"), server: profBare }, profileDir: profDirs.bare },
        { label: "service Health/Check", target: { ...byKey("health"), server: profServer }, profileDir: profDirs.svc },
        { label: "GetToken (gRPC)", target: { ...byKey("pg"), server: profServer, body: getTokenBody(profFrame) }, profileDir: profDirs.svc },
        { label: "GetToken (Connect JSON)", target: { ...byKey("connect"), server: profServer, body: connectJsonBody(profFrame) }, profileDir: profDirs.svc },
      ],
      async () => {
        const exited = [profSvc.exited.then(() => Date.now()), once(profBare.child, "exit").then(() => Date.now())];
        profSvc.kill("SIGTERM");
        profBare.child.kill("SIGTERM");
        const [svcAt, bareAt] = await Promise.all(exited);
        return new Map([
          [profDirs.svc, svcAt!],
          [profDirs.bare, bareAt!],
        ]);
      },
    );
    sections.push(hotPathMarkdown(targets, medians, ratio, rounds.length, peak, profiles));
    rmSync(hotDir, { recursive: true, force: true });
    const glance: Glance = {
      getToken: ratio("pg", "bareGrpc", (m) => m.reqPerSec),
      getTokenP99: ratio("pg", "bareGrpc", (m) => m.p99Ms),
      health: ratio("health", "bareGrpc", (m) => m.reqPerSec),
      pg: medians.pg!,
      bare: medians.bareGrpc!,
      healthM: medians.health!,
      peakMiB: peak,
      rounds: rounds.length,
    };

    // Issue 21, item 1: the same GetToken under several V8 heap settings (also `npm run bench:heap`).
    writeSection("heap", await runHeapBench({ provider, serverUrl, rounds: QUICK ? 1 : 5, log: console.log }));

    // Issue 21, item 3: GetToken over 100,000 sessions chosen at random (mostly cache misses), against the bare server.
    console.log(`\n== random read mix: GetToken over ${RANDOM_SESSIONS.toLocaleString("en")} sessions chosen at random`);
    const mixDb = await createTestDatabase(serverUrl);
    const mixSvc = await startBenchService(provider, "random-mix", mixDb);
    procs.push(mixSvc);
    const mixBare = await startBare("grpc-js");
    bares.push(mixBare.child);
    const mixFrames = await insertSessions(mixDb, keys, RANDOM_SESSIONS, "mix-");
    const mixCache0 = await cacheLookups(mixSvc);
    const mix = await runRandomMix({
      serviceUrl: mixSvc.url,
      bareUrl: mixBare.url,
      frames: mixFrames,
      rounds: QUICK ? 1 : 5,
      durationMs: DURATION_MS,
      warmupMs: WARMUP_MS,
      connections: CONNECTIONS,
      concurrency: STREAMS,
      log: console.log,
    });
    const mixCache = await cacheLookups(mixSvc);
    const mixHits = (mixCache.hit - mixCache0.hit) / (mixCache.hit - mixCache0.hit + mixCache.miss - mixCache0.miss);
    const mixPeak = peakRssMiB(mixSvc.child.pid!);
    mixSvc.kill("SIGTERM");
    await mixSvc.exited;
    mixBare.child.kill("SIGKILL");
    glance.mix = mix;
    sections.push(`## Random read mix: GetToken over ${RANDOM_SESSIONS.toLocaleString("en")} sessions

${RANDOM_SESSIONS.toLocaleString("en")} real sessions (tokens sealed with the service's keys, 640-byte access tokens) written straight into PostgreSQL,
then GetToken for a session chosen uniformly at random on every call (\`bench/loadgen.ts\`, ${CONNECTIONS} connections × ${STREAMS} streams,
${DURATION_MS / 1000} s after ${WARMUP_MS / 1000} s of warm-up; every answer checked by its grpc-status), on a service as deployed
(PostgreSQL, cache on with its defaults: 10,000 entries, 30 s). Each round also runs the bare grpc-js server's Health/Check with
the same load generator and settings. ${mix.rounds.length} paired rounds, medians, ratios per round.

| round | GetToken req/s | p50 / p99 (ms) | bare req/s | bare p99 (ms) | ÷ bare | errors |
|---|---|---|---|---|---|---|
${mix.rounds.map((r, i) => `| ${i + 1} | ${Math.round(r.service.throughput)} | ${fmt(r.service.p50Ms, 2)} / ${fmt(r.service.p99Ms, 2)} | ${Math.round(r.bare.throughput)} | ${fmt(r.bare.p99Ms, 2)} | ${fmt(r.service.throughput / r.bare.throughput, 2)}× | ${JSON.stringify(r.service.errors)} |`).join("\n")}

- Median: ${Math.round(mix.throughput)} req/s against ${Math.round(mix.bareThroughput)}: **${fmt(mix.ratio, 2)}×** (target ≥ 0.4×: ${mix.ratio >= 0.4 ? "met" : "**NOT met**"});
  p99 ${fmt(mix.p99Ms, 2)} ms against ${fmt(mix.bareP99Ms, 2)} ms (${fmt(mix.p99Ratio, 2)}×).
- Cache hits over the rounds: ${fmt(mixHits * 100, 1)} % (the rest read PostgreSQL by primary key). Peak RSS of this service: ${fmt(mixPeak, 0)} MiB.
`);

    // What tracing costs the hot path: its own section (also `npm run bench:tracing`).
    writeSection("tracing", await runTracingBench({ provider, serverUrl, rounds: HOT_ROUNDS, log: console.log }));
    // What the forwarding proxy costs against calling the upstream directly: its own section (also `npm run bench:forward`).
    writeSection("forward", await runForwardBench({ provider, log: console.log }));

    // The NOT_FOUND timing, on a PostgreSQL service with the cache on and 1,000 sessions.
    const nfSvc = await startBenchService(provider, "not-found", await createTestDatabase(serverUrl));
    procs.push(nfSvc);
    const notFound = await notFoundTiming(nfSvc, await seed(nfSvc, SEEDED, "hot-"));
    nfSvc.kill("SIGTERM");
    await nfSvc.exited;

    {
      const { unknown, foreign } = notFound;
      sections.push(`## NOT_FOUND: unknown session against someone else's session

The same answer must not take measurably different time, or it would tell a caller which session ids
exist. GetToken with (a) well-formed session ids that do not exist, (b) existing session ids with the
wrong user; PostgreSQL, cache on, 16 streams, ${ROUNDS} rounds each; medians.

| asked for | req/s | p50 (ms) | p99 (ms) | answered NOT_FOUND |
|---|---|---|---|---|
| unknown session | ${Math.round(unknown.throughput)} | ${fmt(unknown.p50Ms, 2)} | ${fmt(unknown.p99Ms, 2)} | ${unknown.errors["5"] ?? 0} of ${unknown.requests} |
| another user's session | ${Math.round(foreign.throughput)} | ${fmt(foreign.p50Ms, 2)} | ${fmt(foreign.p99Ms, 2)} | ${foreign.errors["5"] ?? 0} of ${foreign.requests} |

Both are the same query (\`where id = $1 and user_id = $2\`), finding nothing, and both miss the cache (keyed
by user and session). p50 ratio (another user's ÷ unknown): ${fmt(foreign.p50Ms / unknown.p50Ms, 2)}×.
`);
    }

    // 2: scale, PostgreSQL, database path (cache off) and as deployed (cache on).
    const sizes = QUICK ? [1_000, 100_000] : [1_000, 100_000, 1_000_000];
    console.log(`\n== scale: GetToken latency with ${sizes.join(", ")} sessions in PostgreSQL`);
    const scaleDb = await createTestDatabase(serverUrl);
    const scaleSvc = await startBenchService(provider, "scale", scaleDb, { cache: { enabled: false }, refresh: { background: { enabled: false } } });
    procs.push(scaleSvc);
    const scaleFrames = await seed(scaleSvc, SEEDED, "scale-");
    const scale: Array<{ n: number; r: LoadResult }> = [];
    for (const n of sizes) {
      await fillTo(scaleDb, n);
      const rs: LoadResult[] = [];
      for (let i = 0; i < ROUNDS; i++) rs.push(await load(scaleSvc, GET_TOKEN, scaleFrames, { connections: 1, concurrency: 4 }));
      const r = medianResult(rs);
      scale.push({ n, r });
      console.log(`  ${n} sessions: p50 ${fmt(r.p50Ms, 2)} ms, p99 ${fmt(r.p99Ms, 2)} ms, ${Math.round(r.throughput)}/s`);
    }
    scaleSvc.kill("SIGTERM");
    await scaleSvc.exited;
    const base = scale[0]!.r.p50Ms;
    const largest = scale[scale.length - 1]!;
    glance.scale = { n: largest.n, p50: largest.r.p50Ms, base };
    sections.push(`## Scale: GetToken with many sessions stored (PostgreSQL)

GetToken at 4 streams (latency, not throughput) for ${SEEDED} real sessions chosen at random, while the
table holds the given number of sessions (the rest are filler rows of realistic size, inserted with
SQL, then VACUUM ANALYZE). Cache off: every call is a primary-key lookup in PostgreSQL. ${ROUNDS}
rounds; medians.

| sessions stored | GetToken req/s | p50 (ms) | p99 (ms) | p50 ÷ p50 at 1,000 | errors |
|---|---|---|---|---|---|
${scale.map(({ n, r }) => `| ${n.toLocaleString("en")} | ${Math.round(r.throughput)} | ${fmt(r.p50Ms, 2)} | ${fmt(r.p99Ms, 2)} | ${fmt(r.p50Ms / base, 2)}× | ${errorsOf(r)} |`).join("\n")}

Target: p50 at ${largest.n.toLocaleString("en")} ≤ 1.2× p50 at 1,000: **${largest.r.p50Ms / base <= 1.2 ? "met" : "NOT met"}** (${fmt(largest.r.p50Ms / base, 2)}×).
`);

    // 5: write path.
    console.log("\n== write path: StoreSession");
    const writes: Array<{ dialect: string; r: LoadResult }> = [];
    for (const dialect of ["sqlite", "postgresql"] as const) {
      const databaseUrl = dialect === "sqlite" ? `sqlite:${join(dir, "write.db")}` : await createTestDatabase(serverUrl);
      const svc = await startBenchService(provider, `write-${dialect}`, databaseUrl);
      procs.push(svc);
      const frame = grpcFrame(StoreSessionRequestSchema, {
        userId: "writer",
        provider: "corp",
        tokens: { accessToken: `eyJ.${"a".repeat(800)}.sig`, refreshToken: "r".repeat(60), expiresIn: 3600n },
      });
      const r = medianResult([await load(svc, STORE, frame, { connections: 2, concurrency: 8 })]);
      writes.push({ dialect, r });
      console.log(`  ${dialect}: ${Math.round(r.throughput)}/s, p50 ${fmt(r.p50Ms, 2)} ms, p99 ${fmt(r.p99Ms, 2)} ms`);
      svc.kill("SIGTERM");
      await svc.exited;
    }
    sections.push(`## Write path: StoreSession

Each call seals three tokens (AES-256-GCM) and inserts a row; 16 streams; one run of ${DURATION_MS / 1000} s.

| database | req/s | p50 (ms) | p99 (ms) | ok | errors |
|---|---|---|---|---|---|
${writes.map(({ dialect, r }) => row(dialect, r).replace(/^\| [^|]+ \| (\d+)/, `| ${dialect} | $1`)).join("\n")}
`);

    // 4: refresh storms, the target scenario and a smaller one.
    for (const callers of [1000, 100]) {
      console.log(`\n== refresh storm: ${callers} callers over 3 replicas`);
      const storm = await runRefreshStorm({ callers, replicas: 3, runs: QUICK ? 1 : 5, providerMs: 200, profileRuns: QUICK ? 1 : 3 });
      sections.push(storm.markdown.replace(/^## Refresh storm: (\d+) callers \(`npm run bench:storm`\)/, "## Refresh storm: $1 callers (also `npm run bench:storm`)"));
    }

    const header = `## How these figures were made

- Machine: ${machine()}. The load generators, the service, PostgreSQL and the identity provider share it;
  it is a shared virtual machine, so figures move from run to run, and ratios are taken within one round.
- Command: \`${QUICK ? "BENCH_QUICK=1 " : ""}npm run bench\` (\`bench/bench.ts\`). The hot path is measured with
  h2load (Debian's nghttp2-client); the other sections with \`bench/loadgen.ts\` in its own process: raw
  HTTP/2 streams, each answer checked by its \`grpc-status\` trailer; "errors" counts every non-zero status
  or broken stream.
- The service runs as built (\`node ${NODE_HEAP_ARGS.join(" ")} dist/src/main.js\`, \`npm start\`'s V8 heap flags), both
  listeners on, logging one JSON line per token service RPC, as deployed.
- Run on ${new Date().toISOString().slice(0, 10)}; load average ${loadAtStart} at the start, ${loadavg()} at the end (/proc/loadavg).
`;
    writeSection("bench", [header, ...sections].join("\n"));
    writeSection("glance-hot", glanceMarkdown(glance));
    console.log("\nwritten to BENCHMARKS.md");
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    for (const b of bares) b.kill("SIGKILL");
    await crmAs?.close();
    await provider.close();
    await postgres?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
