/**
 * What tracing costs GetToken: the same service (PostgreSQL, cache on) with
 * tracing off, on at 1 % sampling and on at 100 %, each exporting OTLP
 * (http/protobuf) to a collector that accepts and drops everything. The calls
 * carry no traceparent, so the sampler alone decides, as for a caller that
 * does not trace. Paired h2load rounds (bench/hot-path.ts); medians.
 *
 * A second service with tracing off runs in the same rounds: the spread
 * between two identical processes is the noise floor of the ratios.
 *
 * With BENCH_TRACING_BASELINE=DIR (a built checkout from before tracing
 * existed: DIR/dist/src/main.js), the same rounds also run that build, so
 * "off costs nothing" is measured against code without tracing at all.
 *
 * Part of `npm run bench`; alone: `npm run bench:tracing`.
 */
import { execFileSync } from "node:child_process";
import { once } from "node:events";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { GetTokenRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import type { TestProvider } from "../test/helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { runSectionAlone } from "./standalone.js";
import { paths, runRounds, summarize, type Target } from "./hot-path.js";
import { fmt, machine } from "./report.js";
import { grpcFrame } from "./run-load.js";

const GET_TOKEN_METHOD = "tokenservice.v1.TokenService/GetToken";
/** The pause after each run: the last batch of spans is exported before the next target runs. */
const SETTLE_MS = 2000;

/** A collector that reads every OTLP export and answers 200: the service pays for exporting, nothing is kept. */
async function startNullCollector(): Promise<{ url: string; exports: () => number; close: () => void }> {
  let count = 0;
  const server = http.createServer((req, res) => {
    req.resume();
    req.on("end", () => {
      count++;
      res.writeHead(200, { "content-type": "application/x-protobuf" }).end();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, exports: () => count, close: () => server.close() };
}

interface Variant {
  key: string;
  label: string;
  env: Record<string, string>;
  script?: string;
}

/** The commit a checkout is at, for the report (not its path). */
function describeBuild(dir: string): string {
  try {
    return `commit ${execFileSync("git", ["-C", dir, "rev-parse", "--short", "HEAD"], { encoding: "utf8" }).trim()}`;
  } catch {
    return "another checkout";
  }
}

/** Runs the tracing rounds; returns the BENCHMARKS.md section. */
export async function runTracingBench(o: { provider: TestProvider; serverUrl: string; rounds: number; log: (line: string) => void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "token-service-bench-tracing-"));
  const collector = await startNullCollector();
  const procs: ServiceProcess[] = [];
  try {
    // Batches go out every second (not the default 5 s), and each run is followed by a pause longer than that.
    const otlp = { OTEL_EXPORTER_OTLP_ENDPOINT: collector.url, OTEL_EXPORTER_OTLP_PROTOCOL: "http/protobuf", OTEL_BSP_SCHEDULE_DELAY: "1000" };
    const variants: Variant[] = [
      { key: "off", label: "tracing off (no OTEL_* variables)", env: {} },
      { key: "ratio1", label: "tracing on, 1 % sampled (traceidratio 0.01)", env: { ...otlp, OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.01" } },
      { key: "always", label: "tracing on, 100 % sampled (always_on)", env: { ...otlp, OTEL_TRACES_SAMPLER: "always_on" } },
      // Two identical services differ by more than tracing's cost on a shared machine: this one shows by how much.
      { key: "off2", label: "tracing off, a second identical service (the noise floor)", env: {} },
    ];
    const baseline = process.env.BENCH_TRACING_BASELINE;
    if (baseline) variants.unshift({ key: "baseline", label: `a build without tracing (${describeBuild(baseline)})`, env: {}, script: join(baseline, "dist/src/main.js") });
    const keys = generateKeySpec("bench");
    const targets: Target[] = [];
    for (const v of variants) {
      const config = join(dir, `${v.key}.yaml`);
      writeFileSync(config, stringify({ providers: [o.provider.configEntry()], log_level: "info" }));
      const svc = await spawnService(
        { DATABASE_URL: await createTestDatabase(o.serverUrl), TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config, ...v.env },
        { script: v.script },
      );
      procs.push(svc);
      const tokens = await o.provider.login(`bench-${v.key}`);
      const { sessionId } = await connectGrpcClient(svc.url).storeSession({
        userId: `bench-${v.key}`,
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, idToken: tokens.id_token, expiresIn: 3600n },
      });
      const body = Buffer.from(grpcFrame(GetTokenRequestSchema, { userId: `bench-${v.key}`, sessionId }), "base64");
      targets.push({
        key: v.key,
        label: v.label,
        server: { name: v.key, pid: svc.child.pid!, url: svc.url, httpUrl: svc.httpUrl, adminUrl: svc.adminUrl },
        path: paths.getToken,
        body,
        metricsMethod: GET_TOKEN_METHOD,
      });
    }
    o.log(`\n== tracing: GetToken with tracing off, 1 % and 100 % sampled, ${o.rounds} paired rounds`);
    const before = collector.exports();
    const rounds = await runRounds(targets, o.rounds, o.log, SETTLE_MS);
    const exported = collector.exports() - before;
    const { medians, ratio } = summarize(rounds);
    const tput = (m: { reqPerSec: number }) => m.reqPerSec;
    const cpu = (m: { cpuUsPerCall: number }) => m.cpuUsPerCall;
    const p99 = (m: { p99Ms: number }) => m.p99Ms;
    const spread = (a: string, b: string) => {
      const rs = rounds.map((r) => r[a]!.reqPerSec / r[b]!.reqPerSec).sort((x, y) => x - y);
      return `${fmt(rs[0]!, 2)}–${fmt(rs[rs.length - 1]!, 2)}`;
    };
    const one = ratio("ratio1", "off", tput);
    const floor = ratio("off2", "off", tput);
    const rows = targets.map(
      (t) =>
        `| ${t.label} | ${Math.round(medians[t.key]!.reqPerSec)} | ${fmt(medians[t.key]!.p99Ms, 2)} | ${fmt(medians[t.key]!.cpuUsPerCall, 0)} | ${t.key === "off" ? "1" : fmt(ratio(t.key, "off", tput), 2)}× | ${t.key === "off" ? "" : spread(t.key, "off")} |`,
    );
    const offLine = baseline
      ? `- Off against a build without tracing: **${fmt(ratio("off", "baseline", tput), 2)}×** throughput (per round ${spread("off", "baseline")}), CPU per call ${fmt(ratio("off", "baseline", cpu), 2)}×, p99 ${fmt(ratio("off", "baseline", p99), 2)}×.`
      : "- Off: tracing off runs no tracing code beyond one `enabled` check per span site (the chain, the session read, the refresh); set BENCH_TRACING_BASELINE to a build from before tracing to measure it against that.";
    return `## Tracing: GetToken with tracing off, 1 % and 100 % sampled

GetToken (PostgreSQL, cache on: a cache hit, the common case) on one service per variant, each with its
own database, exporting OTLP http/protobuf in batches (every second) to a local collector that drops what it gets
(${exported} export requests over the measured rounds). The calls carry no \`traceparent\`, so the sampler alone
decides. h2load \`-n 40000 -c 4 -m 16\`, ${rounds.length} paired rounds with a ${SETTLE_MS / 1000} s pause after each run (the last
spans of one target are exported before the next runs), medians; ratios are per round, then the median.
Run on ${new Date().toISOString().slice(0, 10)}, ${machine()}.

| variant | req/s | p99 (ms) | CPU per call (µs) | req/s ÷ off | per round |
|---|---|---|---|---|---|
${rows.join("\n")}

- Target: 1 % sampling costs under 5 % of throughput: **${one >= 0.95 ? "met" : "NOT met"}** (${fmt(one, 2)}×; CPU per call ${fmt(ratio("ratio1", "off", cpu), 2)}×).
- Noise floor: the second service with tracing off ran at ${fmt(floor, 2)}× the first (per round ${spread("off2", "off")}), CPU per call ${fmt(ratio("off2", "off", cpu), 2)}×.
${offLine}
- 100 % sampling (every call a trace of two spans, the RPC and its session read, exported): ${fmt(ratio("always", "off", tput), 2)}× throughput, CPU per call ${fmt(ratio("always", "off", cpu), 2)}×.
`;
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    collector.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// `npm run bench:tracing`: this section alone.
if (process.argv[1] === fileURLToPath(import.meta.url)) await runSectionAlone("tracing", 7, runTracingBench);
