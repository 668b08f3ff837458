/**
 * Issue 21, item 1: GetToken's tail against V8's heap settings. The same
 * service (PostgreSQL, cache on, one hot session) runs once per setting, in
 * paired h2load rounds with the bare grpc-js server (bench/hot-path.ts):
 * throughput, p50, p99 and p99.9, the event-loop delay the service measured
 * over each run (perf_hooks monitorEventLoopDelay, through prom-client's
 * default metrics), the time it spent in garbage collection, and its peak RSS.
 *
 * Part of `npm run bench`; alone: `npm run bench:heap`.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { GetTokenRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import type { TestProvider } from "../test/helpers/oidc-provider.js";
import { NODE_HEAP_ARGS, NO_PRETENURING, spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { runSectionAlone } from "./standalone.js";
import { bodies, gcSummary, GRPC_HEADERS, paths, peakRssMiB, runRounds, startBare, summarize, type Measurement, type Target } from "./hot-path.js";
import { runH2load } from "./h2load.js";
import { fmt, machine } from "./report.js";
import { grpcFrame } from "./run-load.js";

const GET_TOKEN_METHOD = "tokenservice.v1.TokenService/GetToken";

/**
 * The settings tried: what the service runs with (V8's default semi-space on Node 20, 16 MiB, pinned, and
 * pretenuring off), the same with V8's pretenuring on, a smaller young generation with a larger growing factor under
 * the same cap, larger growing factors under smaller caps, and no cap. All but the second run with pretenuring off.
 */
export const HEAP_VARIANTS: Array<{ key: string; args: string[] }> = [
  // What npm start, the image and the Kubernetes example use (NODE_HEAP_ARGS).
  { key: "defaults", args: NODE_HEAP_ARGS },
  // The defaults until 2026-12-07: after the start-up burst V8 may pretenure the calls' allocation sites, and then
  // every call's objects are allocated in the old generation (docs/performance.md, "Pretenuring").
  { key: "pretenuring-on", args: NODE_HEAP_ARGS.filter((a) => a !== NO_PRETENURING) },
  // Under a cap this small V8 lets the old generation grow only about 1.3-1.5× its live size before the next full
  // collection, and each scavenge promotes 3-4 KB a call of objects that outlive two scavenges (the bare grpc-js
  // server's calls as much): --heap-growing-percent sets that factor (1 + percent / 100), fewer full collections
  // for more RSS. Tried as the defaults on 2026-12-05 and left as a choice (docs/performance.md, "Memory"): a
  // semi-space of 8 MiB pays for the larger factor, at twice the scavenges.
  { key: "old160-semi8-grow60", args: ["--max-old-space-size=160", "--max-semi-space-size=8", "--heap-growing-percent=60", NO_PRETENURING] },
  { key: "old160-semi16-grow60", args: ["--max-old-space-size=160", "--max-semi-space-size=16", "--heap-growing-percent=60", NO_PRETENURING] },
  { key: "old144-semi16-grow150", args: ["--max-old-space-size=144", "--max-semi-space-size=16", "--heap-growing-percent=150", NO_PRETENURING] },
  // No cap: V8's own limit for this machine (its growing factor is then about 4).
  { key: "semi16", args: ["--max-semi-space-size=16", NO_PRETENURING] },
];

/**
 * What every service takes first, as from a reconnecting fleet or a refresh storm: Health/Check with 2,048 calls in
 * flight (h2load -c 8 -m 256). With pretenuring on, a burst like it makes V8 pretenure the calls' allocation sites.
 */
export const START_BURST = { requests: 30_000, clients: 8, streams: 256 };

/** prom-client samples the event loop with a 10 ms timer: each reading is that interval plus the delay. */
const LOOP_RESOLUTION_MS = 10;

/** START_BURST against a server; every call must succeed. */
export async function startBurst(url: string): Promise<void> {
  const r = await runH2load({ url, path: paths.health, body: bodies.empty, headers: GRPC_HEADERS, ...START_BURST });
  if (r.succeeded !== r.requests) throw new Error(`start-up burst: ${r.requests - r.succeeded} of ${r.requests} calls failed`);
}

/** Runs the heap-settings rounds; returns the BENCHMARKS.md section. */
export async function runHeapBench(o: { provider: TestProvider; serverUrl: string; rounds: number; log: (line: string) => void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "token-service-bench-heap-"));
  const procs: ServiceProcess[] = [];
  const bare = await startBare("grpc-js");
  try {
    const keys = generateKeySpec("bench");
    // BENCH_HEAP_ONLY=key,key: some settings only (while trying them).
    const only = process.env.BENCH_HEAP_ONLY?.split(",");
    const variants = HEAP_VARIANTS.filter((v) => !only || only.includes(v.key));
    const targets: Target[] = [
      { key: "bare", label: "bare @grpc/grpc-js server, Health/Check", server: bare, path: paths.health, body: bodies.empty },
    ];
    for (const v of variants) {
      const config = join(dir, `${v.key}.yaml`);
      writeFileSync(config, stringify({ providers: [o.provider.configEntry()], log_level: "info" }));
      const svc = await spawnService(
        { DATABASE_URL: await createTestDatabase(o.serverUrl), TOKEN_SERVICE_ENCRYPTION_KEYS: keys, TOKEN_SERVICE_CONFIG: config },
        { heapArgs: v.args, nodeArgs: ["--trace-gc"] },
      );
      procs.push(svc);
      // BENCH_HEAP_BURST=0: no start-up burst (to see what pretenuring does without it).
      if (process.env.BENCH_HEAP_BURST !== "0") await startBurst(svc.url);
      const { sessionId } = await connectGrpcClient(svc.url).storeSession({
        userId: `heap-${v.key}`,
        provider: "corp",
        tokens: { accessToken: `eyJhbGciOiJSUzI1NiJ9.${"a".repeat(860)}.sig`, refreshToken: `rt-${"r".repeat(40)}`, expiresIn: 86_400n },
      });
      targets.push({
        key: v.key,
        label: `\`${v.args.join(" ")}\``,
        server: { name: v.key, pid: svc.child.pid!, url: svc.url, httpUrl: svc.httpUrl, adminUrl: svc.adminUrl },
        path: paths.getToken,
        body: Buffer.from(grpcFrame(GetTokenRequestSchema, { userId: `heap-${v.key}`, sessionId }), "base64"),
        metricsMethod: GET_TOKEN_METHOD,
      });
    }
    o.log(`\n== heap settings: GetToken under ${variants.length} settings and the bare grpc-js server, ${o.rounds} paired rounds`);
    const rounds = await runRounds(targets, o.rounds, o.log);
    const { medians, ratio } = summarize(rounds);
    const peaks = Object.fromEntries(procs.map((p, i) => [variants[i]!.key, peakRssMiB(p.child.pid!)]));
    if (process.env.BENCH_HEAP_TRACE_DIR) procs.forEach((p, i) => writeFileSync(join(process.env.BENCH_HEAP_TRACE_DIR!, `${variants[i]!.key}.gc`), p.stdout().split("\n").filter((l) => !l.startsWith("{")).join("\n")));
    const gcs = Object.fromEntries(procs.map((p, i) => [variants[i]!.key, gcSummary(p.stdout())]));
    const b = medians.bare!;
    const gcCell = (g: ReturnType<typeof gcSummary>) => `${g.scavenges} scavenges, max ${fmt(g.scavengeMaxMs, 1)} ms; ${g.fulls} full, max ${fmt(g.fullMaxMs, 1)} ms`;
    const row = (t: Target) => {
      const m: Measurement = medians[t.key]!;
      const own = t.key !== "bare";
      return `| ${t.label} | ${Math.round(m.reqPerSec)} | ${own ? `${fmt(ratio(t.key, "bare", (x) => x.reqPerSec), 2)}×` : "1"} | ${fmt(m.p50Ms, 2)} / ${fmt(m.p99Ms, 2)} / ${fmt(m.p999Ms, 2)} | ${own ? `${fmt(ratio(t.key, "bare", (x) => x.p99Ms), 2)}×` : "1"} | ${own ? `${fmt(m.loopP99Ms! - LOOP_RESOLUTION_MS, 1)} / ${fmt(m.loopMaxMs! - LOOP_RESOLUTION_MS, 1)}` : ""} | ${own ? `${fmt(m.gcUsPerCall!, 1)} (${fmt(m.gcPer1000!, 1)})` : ""} | ${own ? gcCell(gcs[t.key]!) : ""} | ${fmt(m.cpuUsPerCall, 0)} | ${own ? fmt(peaks[t.key]!, 0) : ""} |`;
    };
    return `## Heap settings: GetToken's tail against V8's heap flags

GetToken (PostgreSQL, cache on, one session) on one service per setting, each with its own database, and the bare
grpc-js server's Health/Check (pretenuring off, as the service), in ${rounds.length} paired rounds of h2load \`-n 40000 -c 4 -m 16\` (the order rotates); medians,
ratios per round against the bare server. Event-loop delay is what the service itself measured over each run
(\`perf_hooks.monitorEventLoopDelay\` through prom-client's default metrics, reset at each scrape; its 10 ms sampling
interval taken off each reading); GC is the time in
\`nodejs_gc_duration_seconds\` over the run, per call, and collections per 1,000 calls. Peak RSS: \`VmHWM\` after all rounds,
both listeners on. Each service first takes a start-up burst: ${START_BURST.requests.toLocaleString("en-US")} Health/Check calls from h2load
\`-c ${START_BURST.clients} -m ${START_BURST.streams}\` (${(START_BURST.clients * START_BURST.streams).toLocaleString("en-US")} in flight), as a reconnecting fleet or a refresh storm brings. Each service also runs with \`--trace-gc\`: its pauses over the whole life of the process (start, seeding,
warm-up and rounds). \`npm start\`, the image and the Kubernetes example use \`${NODE_HEAP_ARGS.join(" ")}\`.
Run on ${new Date().toISOString().slice(0, 10)}, ${machine()}.

| setting | req/s | ÷ bare | p50 / p99 / p99.9 (ms) | p99 ÷ bare | loop delay p99 / max (ms) | GC µs per call (per 1,000) | \`--trace-gc\`, whole life | CPU per call (µs) | peak RSS (MiB) |
|---|---|---|---|---|---|---|---|---|---|
${targets.map(row).join("\n")}

The bare server's p50 / p99 / p99.9: ${fmt(b.p50Ms, 2)} / ${fmt(b.p99Ms, 2)} / ${fmt(b.p999Ms, 2)} ms.
`;
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    bare.child.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  }
}

// `npm run bench:heap`: this section alone.
if (process.argv[1] === fileURLToPath(import.meta.url)) await runSectionAlone("heap", 5, runHeapBench);
