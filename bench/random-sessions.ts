/**
 * Issue 21, item 3: a realistic read mix. `n` real sessions (tokens sealed
 * with the service's own keys, as StoreSession would) are written straight
 * into PostgreSQL, then GetToken is called for sessions chosen uniformly at
 * random among them (bench/loadgen.ts picks one request body per call), so
 * that most calls miss the replica's cache (10,000 entries by default) and
 * read PostgreSQL. Paired with a bare grpc-js server's Health/Check at the
 * same load in each round.
 *
 * Part of `npm run bench`. Alone (prints its rounds, writes nothing to BENCHMARKS.md):
 *
 *   npm run build && tsx bench/random-sessions.ts
 *   BENCH_MIX_ROUNDS=6 tsx bench/random-sessions.ts    # rounds (default 5, as in npm run bench)
 *   BENCH_MIX_SESSIONS=20000 tsx bench/random-sessions.ts  # sessions (default 100,000)
 *   BENCH_BASELINE=DIR tsx bench/random-sessions.ts    # the service of a built checkout of another commit (DIR/dist/src/main.js)
 *   BENCH_MIX_PROFILE=DIR tsx bench/random-sessions.ts # the service under node --cpu-prof, its profile written to DIR
 *
 * Sessions are written with last_used_at = now(), so GetToken records their
 * use (last_used_resolution, 60 s) only from about a minute after the insert:
 * five rounds of 10 + 10 s pass that point.
 */
import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import pg from "pg";
import { stringify } from "yaml";
import { GetTokenRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec, parseKeyRing } from "../src/crypto/key-ring.js";
import { TokenVault } from "../src/sessions/token-vault.js";
import { startTestProvider } from "../test/helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { benchPostgres, type BenchPostgres } from "./database.js";
import { startBare } from "./hot-path.js";
import type { LoadResult, LoadSpec } from "./loadgen.js";
import { loadavg } from "./proc-stats.js";
import { fmt, median } from "./report.js";
import { EMPTY_FRAME, grpcFrame, runLoadProcess } from "./run-load.js";

const BATCH = 1000;

/** Writes `n` active sessions of provider `corp` for users `${prefix}0…`; returns a GetToken frame (base64) for each. */
export async function insertSessions(databaseUrl: string, keySpec: string, n: number, prefix: string): Promise<string[]> {
  const vault = new TokenVault(parseKeyRing(keySpec));
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  const frames: string[] = [];
  try {
    for (let start = 0; start < n; start += BATCH) {
      const values: unknown[] = [];
      const rows: string[] = [];
      for (let i = start; i < Math.min(n, start + BATCH); i++) {
        const id = randomBytes(32).toString("base64url");
        const userId = `${prefix}${i}`;
        const access = `eyJhbGciOiJSUzI1NiJ9.${Buffer.from(JSON.stringify({ sub: userId, pad: "x".repeat(600) })).toString("base64url")}.sig`;
        const sealed = vault.sealAll({ id, userId, provider: "corp" }, { access, refresh: `rt-${i}-${"r".repeat(40)}`, id: undefined });
        const b = values.length;
        values.push(id, userId, sealed.keyId, sealed.accessCt, sealed.refreshCt);
        rows.push(
          `($${b + 1}, $${b + 2}, 'corp', 'active', $${b + 3}, $${b + 4}, $${b + 5}, null, 'Bearer', '', now() + interval '1 day', now(), null, null, now(), now(), now(), 1, null, null, null, null, null)`,
        );
        frames.push(grpcFrame(GetTokenRequestSchema, { userId, sessionId: id }));
      }
      await client.query(
        `insert into sessions (id, user_id, provider, status, key_id, access_ct, refresh_ct, id_ct, token_type, scope,
           access_expires_at, access_issued_at, id_expires_at, refresh_expires_at, created_at, updated_at, last_used_at,
           version, lease_owner, lease_until, last_error_code, last_error_at, reauth_reason)
         values ${rows.join(", ")}`,
        values,
      );
    }
    await client.query("vacuum analyze sessions");
  } finally {
    await client.end();
  }
  return frames;
}

export interface RandomMixResult {
  rounds: Array<{ service: LoadResult; bare: LoadResult }>;
  /** Medians over the rounds; ratios paired per round. */
  throughput: number;
  bareThroughput: number;
  ratio: number;
  p50Ms: number;
  p99Ms: number;
  bareP99Ms: number;
  p99Ratio: number;
  errors: number;
}

/** Paired rounds: GetToken over random `frames` on the service, Health/Check on the bare server, same load. */
export async function runRandomMix(options: {
  serviceUrl: string;
  bareUrl: string;
  frames: string[];
  rounds: number;
  durationMs: number;
  warmupMs: number;
  connections: number;
  concurrency: number;
  log: (line: string) => void;
}): Promise<RandomMixResult> {
  const spec = (url: string, path: string, frame: string | string[]): LoadSpec => ({
    mode: "sustained",
    targets: [{ url, path, frame }],
    connections: options.connections,
    concurrency: options.concurrency,
    durationMs: options.durationMs,
    warmupMs: options.warmupMs,
  });
  const rounds: RandomMixResult["rounds"] = [];
  for (let r = 0; r < options.rounds; r++) {
    const service = await runLoadProcess(spec(options.serviceUrl, "/tokenservice.v1.TokenService/GetToken", options.frames));
    const bare = await runLoadProcess(spec(options.bareUrl, "/grpc.health.v1.Health/Check", EMPTY_FRAME));
    rounds.push({ service, bare });
    options.log(
      `  round ${r + 1}: random GetToken ${Math.round(service.throughput)}/s p99 ${fmt(service.p99Ms, 2)} ms (errors ${JSON.stringify(service.errors)}), bare ${Math.round(bare.throughput)}/s p99 ${fmt(bare.p99Ms, 2)} ms`,
    );
  }
  const m = (f: (x: { service: LoadResult; bare: LoadResult }) => number) => median(rounds.map(f));
  return {
    rounds,
    throughput: m((x) => x.service.throughput),
    bareThroughput: m((x) => x.bare.throughput),
    ratio: m((x) => x.service.throughput / x.bare.throughput),
    p50Ms: m((x) => x.service.p50Ms),
    p99Ms: m((x) => x.service.p99Ms),
    bareP99Ms: m((x) => x.bare.p99Ms),
    p99Ratio: m((x) => x.service.p99Ms / x.bare.p99Ms),
    errors: rounds.reduce((n, x) => n + Object.values(x.service.errors).reduce((a, b) => a + b, 0), 0),
  };
}

/** This scenario alone, as `npm run bench` runs it (4 connections × 16 streams, 8 s after 2 s of warm-up per round). */
async function runAlone(): Promise<void> {
  const sessions = Number(process.env.BENCH_MIX_SESSIONS ?? 100_000);
  const rounds = Number(process.env.BENCH_MIX_ROUNDS ?? 5);
  const dir = mkdtempSync(join(tmpdir(), "token-service-mix-"));
  const keys = generateKeySpec("bench");
  const provider = await startTestProvider({ accessTokenTtl: 3600 });
  let postgres: BenchPostgres | undefined;
  let svc: ServiceProcess | undefined;
  let bare: Awaited<ReturnType<typeof startBare>> | undefined;
  console.log(`load average at the start: ${loadavg()}`);
  try {
    postgres = await benchPostgres();
    const db = await createTestDatabase(postgres.url);
    const config = join(dir, "random-mix.yaml");
    writeFileSync(config, stringify({ providers: [provider.configEntry()], log_level: "info" }));
    const baseline = process.env.BENCH_BASELINE;
    if (baseline) console.log(`service: ${join(baseline, "dist/src/main.js")}`);
    const script = baseline ? join(baseline, "dist/src/main.js") : undefined;
    const profileDir = process.env.BENCH_MIX_PROFILE;
    const nodeArgs = profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : [];
    svc = await spawnService({ DATABASE_URL: db, TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config }, { script, nodeArgs });
    bare = await startBare("grpc-js");
    const frames = await insertSessions(db, keys, sessions, "mix-");
    const writtenAt = new Date();
    console.log(`${sessions.toLocaleString("en")} sessions written at ${writtenAt.toISOString()}`);
    const mix = await runRandomMix({
      serviceUrl: svc.url,
      bareUrl: bare.url,
      frames,
      rounds,
      durationMs: 8000,
      warmupMs: 2000,
      connections: 4,
      concurrency: 16,
      log: (line) => console.log(`${line} (load ${loadavg()})`),
    });
    console.log(
      `median: ${Math.round(mix.throughput)} req/s against ${Math.round(mix.bareThroughput)}: ${fmt(mix.ratio, 2)}× ` +
        `(p99 ${fmt(mix.p99Ms, 2)} against ${fmt(mix.bareP99Ms, 2)} ms; errors ${mix.errors}); load average at the end: ${loadavg()}`,
    );
    // The service's last_used_at writes, seen from the database (once it has written what it held).
    svc.kill("SIGTERM");
    await svc.exited;
    const client = new pg.Client({ connectionString: db });
    await client.connect();
    const used = await client.query<{ n: string }>("select count(*) as n from sessions where last_used_at > $1", [new Date(writtenAt.getTime() + 1000)]);
    await client.end();
    console.log(`sessions whose last_used_at GetToken wrote: ${Number(used.rows[0]!.n).toLocaleString("en")}`);
  } finally {
    svc?.kill("SIGTERM");
    await svc?.exited;
    bare?.child.kill("SIGKILL");
    await provider.close();
    await postgres?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

if (process.argv[1] === fileURLToPath(import.meta.url)) await runAlone();
