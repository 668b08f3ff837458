/**
 * What the forwarding proxy (/forward/{target}/…) costs against calling the
 * OpenAI-compatible stand-in directly, in one run on one machine: the built
 * service as its own process (SQLite, cache on), a real session (a real
 * oidc-provider login, StoreSession), requests naming the session
 * (x-token-service-session: the cached path) and the stand-in of the tests.
 *
 * - small JSON requests (POST /v1/chat/completions, stream false): the
 *   median latency one at a time, and the throughput at 32 in flight;
 * - SSE: time from sending the request to the first event, one at a time;
 * - the same through bench/bare-proxy.ts, a bare Node proxy: the floor.
 *
 * Direct and proxied rounds alternate, so that load from elsewhere on the
 * machine lands on both. /proc/loadavg is recorded before and after.
 * Part of `npm run bench`; alone: `npm run bench:forward`.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once as onceEvent } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Pool } from "undici";
import { stringify } from "yaml";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import { startTestProvider, type TestProvider } from "../test/helpers/oidc-provider.js";
import { startOpenAiStandIn, type OpenAiStandIn } from "../test/helpers/openai-stand-in.js";
import { NO_PRETENURING, spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { fmt, machine, median, percentile, writeSection } from "./report.js";

const ROUNDS = Number(process.env.BENCH_FORWARD_ROUNDS ?? 5);
const SEQUENTIAL = Number(process.env.BENCH_FORWARD_SEQUENTIAL ?? 400);
const CONCURRENT_TOTAL = Number(process.env.BENCH_FORWARD_CONCURRENT ?? 2000);
const IN_FLIGHT = 32;
const SSE_REQUESTS = Number(process.env.BENCH_FORWARD_SSE ?? 200);

const JSON_BODY = JSON.stringify({ model: "bench", stream: false, messages: [{ role: "user", content: "hi" }] });
const SSE_BODY = JSON.stringify({ model: "bench", stream: true, messages: [{ role: "user", content: "hi" }] });

const loadavg = () => readFileSync("/proc/loadavg", "utf8").trim();

/** CPU time (user + system) a process has used, in ms (Linux: /proc/PID/stat, 100 ticks a second). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

/** One way to reach the stand-in: its origin, the path prefix, and the headers to add. */
interface Route {
  name: "direct" | "proxy" | "bare";
  pool: Pool;
  prefix: string;
  headers: Record<string, string>;
}

async function once(route: Route, body: string): Promise<{ ms: number; firstByteMs: number }> {
  const started = performance.now();
  const res = await route.pool.request({
    method: "POST",
    path: `${route.prefix}/chat/completions`,
    headers: { "content-type": "application/json", ...route.headers },
    body,
  });
  let firstByteMs = NaN;
  for await (const _chunk of res.body) {
    if (Number.isNaN(firstByteMs)) firstByteMs = performance.now() - started;
  }
  if (res.statusCode !== 200) throw new Error(`${route.name}: HTTP ${res.statusCode}`);
  return { ms: performance.now() - started, firstByteMs };
}

/** Median latency of `n` requests one after another. */
async function sequential(route: Route, n: number, body: string, pick: "ms" | "firstByteMs"): Promise<number[]> {
  const out: number[] = [];
  for (let i = 0; i < n; i++) out.push((await once(route, body))[pick]);
  return out;
}

/** Requests per second with `inFlight` requests kept in flight, `total` in all. */
async function throughput(route: Route, total: number, inFlight: number): Promise<number> {
  let next = 0;
  const started = performance.now();
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (next++ < total) await once(route, JSON_BODY);
    }),
  );
  return total / ((performance.now() - started) / 1000);
}

/** bench/bare-proxy.ts in its own process, in front of `target`. */
async function startBareProxy(target: string): Promise<{ child: ChildProcess; url: string }> {
  const script = fileURLToPath(new URL("./bare-proxy.ts", import.meta.url));
  const child = spawn(process.execPath, [NO_PRETENURING, "--import", "tsx", script, target], { stdio: ["ignore", "pipe", "inherit"] });
  const [chunk] = (await onceEvent(child.stdout!, "data")) as [Buffer];
  return { child, url: `http://127.0.0.1:${Number(chunk.toString().trim())}` };
}

export async function runForwardBench(o: { provider: TestProvider; log: (line: string) => void }): Promise<string> {
  const dir = mkdtempSync(join(tmpdir(), "token-service-bench-forward-"));
  let standIn: OpenAiStandIn | undefined;
  let svc: ServiceProcess | undefined;
  let bareProxy: { child: ChildProcess; url: string } | undefined;
  const pools: Pool[] = [];
  try {
    standIn = await startOpenAiStandIn();
    const before = loadavg();
    writeFileSync(
      join(dir, "config.yaml"),
      stringify({
        providers: [o.provider.configEntry("corp")],
        refresh: { background: { enabled: false } },
        forward: [{ id: "models", url: `${standIn.url}/v1`, provider: "corp", allow_insecure_http: true }],
      }),
    );
    svc = await spawnService(
      {
        DATABASE_URL: `sqlite:${join(dir, "s.db")}`,
        TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"),
        TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("bench"),
      },
      // BENCH_FORWARD_PROFILE=DIR: a V8 CPU profile of the service, written there when it exits.
      process.env.BENCH_FORWARD_PROFILE ? { nodeArgs: ["--cpu-prof", `--cpu-prof-dir=${process.env.BENCH_FORWARD_PROFILE}`] } : {},
    );
    const set = await o.provider.login("bench-user");
    const stored = await connectGrpcClient(svc.url).storeSession({
      userId: "bench-user",
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
    });
    const direct: Route = { name: "direct", pool: new Pool(standIn.url, { connections: IN_FLIGHT }), prefix: "/v1", headers: { authorization: `Bearer ${set.access_token}` } };
    const proxy: Route = {
      name: "proxy",
      pool: new Pool(svc.httpUrl!, { connections: IN_FLIGHT }),
      prefix: "/forward/models",
      headers: { "x-token-service-user": "bench-user", "x-token-service-session": stored.sessionId },
    };
    bareProxy = await startBareProxy(standIn.url);
    const bare: Route = { name: "bare", pool: new Pool(bareProxy.url, { connections: IN_FLIGHT }), prefix: "/v1", headers: {} };
    pools.push(direct.pool, proxy.pool, bare.pool);
    const routes = [direct, bare, proxy];
    // Warm-up: connections, JIT, the session cache.
    for (const r of routes) {
      await sequential(r, 200, JSON_BODY, "ms");
      await throughput(r, 500, IN_FLIGHT);
    }
    const series = () => ({ direct: [] as number[], bare: [] as number[], proxy: [] as number[] });
    const [p50, p99, rps, ttfb] = [series(), series(), series(), series()];
    /** CPU time per forwarded request in the throughput phase, in µs (the service's, the bare proxy's). */
    const cpuPerRequest: number[] = [];
    const bareCpuPerRequest: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Each round starts with another route, so that none always runs first.
      for (const r of [0, 1, 2].map((i) => routes[(i + round) % routes.length]!)) {
        const lat = await sequential(r, SEQUENTIAL, JSON_BODY, "ms");
        p50[r.name].push(median(lat));
        p99[r.name].push(percentile(lat, 99));
        const pid = r.name === "proxy" ? svc.child.pid! : r.name === "bare" ? bareProxy.child.pid! : undefined;
        const cpuBefore = pid ? cpuMs(pid) : 0;
        rps[r.name].push(await throughput(r, CONCURRENT_TOTAL, IN_FLIGHT));
        if (pid) (r.name === "proxy" ? cpuPerRequest : bareCpuPerRequest).push(((cpuMs(pid) - cpuBefore) * 1000) / CONCURRENT_TOTAL);
        ttfb[r.name].push(median(await sequential(r, SSE_REQUESTS, SSE_BODY, "firstByteMs")));
      }
      const last = (x: { direct: number[]; bare: number[]; proxy: number[] }, d: number) => `${fmt(x.direct.at(-1)!, d)} / ${fmt(x.bare.at(-1)!, d)} / ${fmt(x.proxy.at(-1)!, d)}`;
      o.log(`  round ${round + 1}/${ROUNDS}: p50 ${last(p50, 3)} ms, ${last(rps, 0)} req/s, SSE TTFB ${last(ttfb, 3)} ms (direct / bare proxy / service)`);
    }
    const after = loadavg();
    const m = (xs: number[]) => median(xs);
    const overhead = m(p50.proxy) - m(p50.direct);
    const ratio = m(rps.proxy) / m(rps.direct);
    const ttfbDelta = m(ttfb.proxy) - m(ttfb.direct);
    const verdict = (ok: boolean) => (ok ? "met" : "**missed**");
    return `## Forwarding: /forward/{target}/… against the stand-in directly

\`npm run bench:forward\` (also part of \`npm run bench\`). ${machine()}.
The built service as its own process (SQLite, cache on), one stored session named by
\`x-token-service-session\`, the OpenAI-compatible stand-in of the tests; the load
generator (undici pools, keep-alive) and the stand-in share the benchmark's process.
Direct, bare-proxy and proxied rounds rotate; medians of ${ROUNDS} rounds (${SEQUENTIAL} sequential
requests, ${CONCURRENT_TOTAL} at ${IN_FLIGHT} in flight and ${SSE_REQUESTS} SSE requests per round and route).
Load average (/proc/loadavg) before: \`${before}\`, after: \`${after}\` (the machine is shared).

"Bare proxy" is bench/bare-proxy.ts in its own process: node:http in front of an undici pool, a fixed token,
nothing else; the floor any Node proxy pays. The overhead and the targets compare the service with direct calls.

| | direct | bare proxy | through the service | overhead | target |
|---|---|---|---|---|---|
| small JSON, p50 latency (one at a time) | ${fmt(m(p50.direct), 3)} ms | ${fmt(m(p50.bare), 3)} ms | ${fmt(m(p50.proxy), 3)} ms | +${fmt(overhead, 3)} ms | ≤ 1 ms: ${verdict(overhead <= 1)} |
| small JSON, p99 latency (one at a time) | ${fmt(m(p99.direct), 3)} ms | ${fmt(m(p99.bare), 3)} ms | ${fmt(m(p99.proxy), 3)} ms | +${fmt(m(p99.proxy) - m(p99.direct), 3)} ms | |
| small JSON, throughput at ${IN_FLIGHT} in flight | ${fmt(m(rps.direct), 0)} req/s | ${fmt(m(rps.bare), 0)} req/s | ${fmt(m(rps.proxy), 0)} req/s | ${fmt(ratio, 2)}× (bare proxy ${fmt(m(rps.bare) / m(rps.direct), 2)}×) | ≥ 0.6×: ${verdict(ratio >= 0.6)} |
| SSE, time to first event (p50) | ${fmt(m(ttfb.direct), 3)} ms | ${fmt(m(ttfb.bare), 3)} ms | ${fmt(m(ttfb.proxy), 3)} ms | +${fmt(ttfbDelta, 3)} ms | within 2 ms: ${verdict(ttfbDelta <= 2)} |
| CPU per request in the throughput phase (user + system, /proc/PID/stat) | | ${fmt(m(bareCpuPerRequest), 0)} µs | ${fmt(m(cpuPerRequest), 0)} µs | | |

At these CPU costs the service forwards about ${fmt(1e6 / m(cpuPerRequest), 0)} requests per second per core it gets
(its log line, metrics and session lookup included), the bare proxy about ${fmt(1e6 / m(bareCpuPerRequest), 0)}; both
figures move with load from elsewhere on a shared machine too (the bare proxy measured 145 to 385 µs across runs).
`;
  } finally {
    await Promise.all(pools.map((p) => p.close().catch(() => undefined)));
    bareProxy?.child.kill("SIGKILL");
    svc?.kill(process.env.BENCH_FORWARD_PROFILE ? "SIGTERM" : "SIGKILL");
    await svc?.exited;
    await standIn?.close();
    rmSync(dir, { recursive: true, force: true });
  }
}

// `npm run bench:forward`: this section alone.
if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const provider = await startTestProvider({ accessTokenTtl: 3600 });
  try {
    console.log("== forwarding overhead");
    const section = await runForwardBench({ provider, log: console.log });
    writeSection("forward", section);
    console.log(`\n${section}\nwritten to BENCHMARKS.md`);
  } finally {
    await provider.close();
  }
}
