/**
 * GetToken on this build against an earlier one: "nothing on the GetToken
 * path got slower" measured, not argued. The same service (PostgreSQL, cache
 * on, the embedded default's listeners and no callers) from this checkout,
 * twice (the second run is the noise floor between two identical
 * processes), and from BENCH_BASELINE=DIR, a built checkout of an earlier
 * commit (DIR/dist/src/main.js). Each has its own database. Paired h2load
 * rounds (bench/hot-path.ts); medians of per-round ratios.
 *
 * `npm run bench:compare` with BENCH_BASELINE set; writes its BENCHMARKS.md section.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { GetTokenRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import { startTestProvider } from "../test/helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { benchPostgres, type BenchPostgres } from "./database.js";
import { paths, runRounds, summarize, type Target } from "./hot-path.js";
import { fmt, machine, writeSection } from "./report.js";
import { grpcFrame } from "./run-load.js";

const GET_TOKEN_METHOD = "tokenservice.v1.TokenService/GetToken";

/** The short commit of a checkout, for the report (never its path). */
function commitOf(dir: string): string {
  try {
    return execFileSync("git", ["-C", dir, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim();
  } catch {
    return "unknown";
  }
}

const baseline = process.env.BENCH_BASELINE;
if (!baseline) {
  console.error("bench:compare needs BENCH_BASELINE=DIR, a built checkout of the commit to compare with (DIR/dist/src/main.js)");
  process.exit(2);
}
const rounds = Number(process.env.BENCH_HOT_ROUNDS ?? 7);
const here = new URL("..", import.meta.url).pathname;
const variants = [
  { key: "this", label: `this build (commit ${commitOf(here)})`, script: undefined as string | undefined },
  { key: "base", label: `the earlier build (commit ${commitOf(baseline)})`, script: join(baseline, "dist/src/main.js") },
  { key: "this2", label: "this build again (the noise floor)", script: undefined as string | undefined },
];

const provider = await startTestProvider({ accessTokenTtl: 3600 });
const dir = mkdtempSync(join(tmpdir(), "token-service-bench-compare-"));
const procs: ServiceProcess[] = [];
let postgres: BenchPostgres | undefined;
try {
  postgres = await benchPostgres();
  const serverUrl = postgres.url;
  const keys = generateKeySpec("bench");
  const targets: Target[] = [];
  for (const v of variants) {
    const config = join(dir, `${v.key}.yaml`);
    writeFileSync(config, stringify({ providers: [provider.configEntry()], log_level: "info" }));
    const env = { DATABASE_URL: await createTestDatabase(serverUrl), TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config };
    const svc = await spawnService(env, { script: v.script });
    procs.push(svc);
    const tokens = await provider.login(`bench-${v.key}`);
    const { sessionId } = await connectGrpcClient(svc.url).storeSession({
      userId: `bench-${v.key}`,
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, idToken: tokens.id_token, expiresIn: 3600n },
    });
    targets.push({
      key: v.key,
      label: v.label,
      server: { name: v.key, pid: svc.child.pid!, url: svc.url, httpUrl: svc.httpUrl, adminUrl: svc.adminUrl },
      path: paths.getToken,
      body: Buffer.from(grpcFrame(GetTokenRequestSchema, { userId: `bench-${v.key}`, sessionId }), "base64"),
      metricsMethod: GET_TOKEN_METHOD,
    });
  }
  console.log(`\n== compare: GetToken on this build and on commit ${commitOf(baseline)}, ${rounds} paired rounds`);
  const measured = await runRounds(targets, rounds, console.log);
  const { medians, ratio } = summarize(measured);
  const tput = (m: { reqPerSec: number }) => m.reqPerSec;
  const spread = (a: string, b: string) => {
    const rs = measured.map((r) => r[a]!.reqPerSec / r[b]!.reqPerSec).sort((x, y) => x - y);
    return `${fmt(rs[0]!, 2)}–${fmt(rs[rs.length - 1]!, 2)}`;
  };
  const rows = targets.map(
    (t) =>
      `| ${t.label} | ${Math.round(medians[t.key]!.reqPerSec)} | ${fmt(medians[t.key]!.p50Ms, 2)} | ${fmt(medians[t.key]!.p99Ms, 2)} | ${fmt(medians[t.key]!.cpuUsPerCall, 0)} | ${t.key === "base" ? "1" : fmt(ratio(t.key, "base", tput), 2)}× | ${t.key === "base" ? "" : spread(t.key, "base")} |`,
  );
  const section = `## GetToken against an earlier build (\`npm run bench:compare\`)

GetToken (PostgreSQL, cache on: a cache hit) on this build and on a build of an earlier commit, each its own
process and database, no callers configured (the embedded default). h2load \`-n 40000 -c 4 -m 16\`, ${measured.length} paired
rounds, medians; ratios are per round, then the median. Run on ${new Date().toISOString().slice(0, 10)}, ${machine()}.

| build | req/s | p50 (ms) | p99 (ms) | CPU per call (µs) | req/s ÷ earlier | per round |
|---|---|---|---|---|---|---|
${rows.join("\n")}

- This build against the earlier one: **${fmt(ratio("this", "base", tput), 2)}×** throughput, CPU per call ${fmt(ratio("this", "base", (m) => m.cpuUsPerCall), 2)}×, p99 ${fmt(ratio("this", "base", (m) => m.p99Ms), 2)}×.
- Noise floor: the second run of this build at ${fmt(ratio("this2", "this", tput), 2)}× the first (per round ${spread("this2", "this")}).
`;
  writeSection("compare", section);
  console.log(`\n${section}\nwritten to BENCHMARKS.md`);
} finally {
  for (const p of procs) p.kill("SIGKILL");
  await provider.close();
  await postgres?.destroy();
  rmSync(dir, { recursive: true, force: true });
}
