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
import { startTestProvider, type TestProvider } from "../test/helpers/oidc-provider.js";
import { startPostgres, type TestPostgres } from "../test/helpers/postgres.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import type { LoadResult, LoadSpec } from "./loadgen.js";
import { runRefreshStorm } from "./refresh-storm.js";
import { fmt, machine, median, writeSection } from "./report.js";
import { EMPTY_FRAME, grpcFrame, runLoadProcess } from "./run-load.js";

const QUICK = process.env.BENCH_QUICK === "1";
const DURATION_MS = QUICK ? 3000 : 8000;
const WARMUP_MS = QUICK ? 1000 : 2000;
const ROUNDS = QUICK ? 1 : 3;
/** 64 concurrent streams: 4 connections × 16 streams. */
const CONNECTIONS = 4;
const STREAMS = 16;
const SEEDED = 1000;

const GET_TOKEN = "/tokenservice.v1.TokenService/GetToken";
const HEALTH = "/grpc.health.v1.Health/Check";
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
  return spawnService(
    { DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config },
    // stdout (one JSON line per RPC) is drained by the helper, as a log shipper would.
  );
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

interface HotPath {
  dialect: string;
  cache: boolean;
  health: LoadResult[];
  getToken: LoadResult[];
  peakRssKiB: number;
}

/** Health/Check against GetToken on one server, alternating, ROUNDS times each. */
async function hotPath(svc: ServiceProcess, frames: string[], dialect: string, cache: boolean): Promise<HotPath> {
  const health = EMPTY_FRAME; // an empty grpc.health.v1.HealthCheckRequest
  const out: HotPath = { dialect, cache, health: [], getToken: [], peakRssKiB: 0 };
  for (let i = 0; i < ROUNDS; i++) {
    const h = await load(svc, HEALTH, health);
    const g = await load(svc, GET_TOKEN, frames);
    out.health.push(h);
    out.getToken.push(g);
    out.peakRssKiB = Math.max(out.peakRssKiB, h.peakRssKiB, g.peakRssKiB);
    console.log(
      `  ${dialect}${cache ? "" : " (cache off)"} round ${i + 1}: Health ${Math.round(h.throughput)}/s p99 ${fmt(h.p99Ms, 2)} ms; ` +
        `GetToken ${Math.round(g.throughput)}/s p99 ${fmt(g.p99Ms, 2)} ms; errors ${errorsOf(h) + errorsOf(g)}`,
    );
  }
  return out;
}

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

async function main(): Promise<void> {
  let postgres: TestPostgres | undefined;
  const provider = await startTestProvider();
  const procs: ServiceProcess[] = [];
  const sections: string[] = [];
  try {
    let serverUrl = process.env.DATABASE_URL;
    if (!serverUrl?.startsWith("postgres")) {
      postgres = await startPostgres();
      serverUrl = postgres.url;
    }

    // 1 and 3: hot path against the empty RPC, on both databases, cache on and off; peak RSS.
    console.log("\n== hot path: GetToken (fresh token) against grpc.health.v1.Health/Check, 64 streams");
    const hot: HotPath[] = [];
    let notFound: { unknown: LoadResult; foreign: LoadResult } | undefined;
    for (const dialect of ["sqlite", "postgresql"] as const) {
      for (const cache of [true, false]) {
        const databaseUrl = dialect === "sqlite" ? `sqlite:${join(dir, `hot-${cache}.db`)}` : await createTestDatabase(serverUrl);
        const svc = await startBenchService(provider, `hot-${dialect}-${cache}`, databaseUrl, { cache: { enabled: cache } });
        procs.push(svc);
        const frames = await seed(svc, SEEDED, "hot-");
        hot.push(await hotPath(svc, frames, dialect, cache));
        if (dialect === "postgresql" && cache) notFound = await notFoundTiming(svc, frames);
        svc.kill("SIGTERM");
        await svc.exited;
      }
    }
    const hotRows = hot.map((h) => {
      const H = medianResult(h.health);
      const G = medianResult(h.getToken);
      return { h, H, G, tput: G.throughput / H.throughput, p99: G.p99Ms / H.p99Ms };
    });
    const pgCached = hotRows.find((r) => r.h.dialect === "postgresql" && r.h.cache)!;
    const peak = Math.max(...hot.map((h) => h.peakRssKiB));
    sections.push(`## Hot path: GetToken against the empty RPC

GetToken for a fresh token (no refresh) and \`grpc.health.v1.Health/Check\` (our practical limit: the
same server and interceptors, no work, and no log line: health calls log at debug, GetToken writes
its one JSON line per call) at the same concurrency: 64 streams (4 HTTP/2
connections × 16). ${SEEDED} stored sessions, read at random. ${ROUNDS} alternating rounds of
${DURATION_MS / 1000} s each after ${WARMUP_MS / 1000} s of warm-up; medians. "Cache off" reads the database on
every call (\`cache.enabled: false\`).

| database | cache | Health/Check req/s | GetToken req/s | throughput ratio | Health p50 / p99 (ms) | GetToken p50 / p99 (ms) | p99 ratio | errors |
|---|---|---|---|---|---|---|---|---|
${hotRows
  .map(
    (r) =>
      `| ${r.h.dialect} | ${r.h.cache ? "on" : "off"} | ${Math.round(r.H.throughput)} | ${Math.round(r.G.throughput)} | **${fmt(r.tput, 2)}×** | ${fmt(r.H.p50Ms, 2)} / ${fmt(r.H.p99Ms, 2)} | ${fmt(r.G.p50Ms, 2)} / ${fmt(r.G.p99Ms, 2)} | **${fmt(r.p99, 2)}×** | ${errorsOf(r.H) + errorsOf(r.G)} |`,
  )
  .join("\n")}

Targets (PostgreSQL, cache on, as deployed): throughput ≥ 0.7× Health/Check: **${pgCached.tput >= 0.7 ? "met" : "NOT met"}** (${fmt(pgCached.tput, 2)}×);
p99 ≤ 2× Health/Check p99: **${pgCached.p99 <= 2 ? "met" : "NOT met"}** (${fmt(pgCached.p99, 2)}×).

## Memory

Peak resident set size of the service process during the hot-path runs above (sampled every 100 ms):
**${Math.round(peak / 1024)} MiB** (target below 200 MB: **${peak * 1024 < 200e6 ? "met" : "NOT met"}**).
`);

    if (notFound) {
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

    // 4: refresh storm.
    console.log("\n== refresh storm: 1000 callers over 3 replicas");
    const storm = await runRefreshStorm({ callers: 1000, replicas: 3, runs: QUICK ? 1 : 5, providerMs: 200, profileRuns: QUICK ? 1 : 3 });
    sections.push(storm.markdown.replace("## Refresh storm: 1000 callers (`npm run bench:refresh`)", "## Refresh storm (also `npm run bench:refresh`)"));

    const header = `## How these figures were made

- Machine: ${machine()}. The load generator, the service, PostgreSQL and the identity provider share it.
- Command: \`${QUICK ? "BENCH_QUICK=1 " : ""}npm run bench\` (\`bench/bench.ts\`); load from \`bench/loadgen.ts\` in its own process:
  raw HTTP/2 streams, each answer checked by its \`grpc-status\` trailer; "errors" counts every
  non-zero status or broken stream.
- The service runs as built (\`node dist/src/main.js\`), logging one JSON line per RPC, as deployed.
- Run on ${new Date().toISOString().slice(0, 10)}.
`;
    writeSection("bench", [header, ...sections].join("\n"));
    console.log("\nwritten to BENCHMARKS.md");
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await provider.close();
    await postgres?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
