/**
 * The hot path against the machine's limits, all with the same h2load
 * settings (`-n 40000 -c 4 -m 16`), in paired rounds: each round runs every
 * target once, back to back, so that each ratio compares runs made under the
 * same conditions on this shared machine. Medians over the rounds.
 *
 * Targets: a bare node:http2 responder and a bare @grpc/grpc-js server
 * (bench/bare-servers.ts), the service's Health/Check, GetToken on
 * PostgreSQL with the cache on and off and on SQLite, and Connect JSON on the
 * HTTP listener. Every answer of the service is checked by grpc-status
 * through its own /metrics; the CPU each server spent per call comes from
 * /proc; a CPU profile of a separate run tells where the time goes.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { fileURLToPath } from "node:url";
import { h2loadArgs, runH2load, type H2loadResult, type H2loadSpec } from "./h2load.js";
import { profileShare, profileTable, RPC_STACK_CATEGORIES, summarizeProfiles, type ProfileSummary } from "./profile.js";
import { fmt, median } from "./report.js";
import { NO_PRETENURING } from "../test/helpers/process.js";

const REQUESTS = 40_000;
const CLIENTS = 4;
const STREAMS = 16;
export const GRPC_HEADERS = { "content-type": "application/grpc", te: "trailers" };
const HEALTH = "/grpc.health.v1.Health/Check";
const GET_TOKEN = "/tokenservice.v1.TokenService/GetToken";
const EMPTY_MESSAGE = Buffer.alloc(5);

/** A process that answers: its pid (for CPU and memory) and, for the service, its /metrics. */
export interface Server {
  name: string;
  pid: number;
  url: string;
  httpUrl?: string;
  adminUrl?: string;
  /** A bare server's `--trace-gc` output so far (it has no /metrics). */
  gcTrace?: () => string;
}

/** One measured path: which server, which RPC, with what body. */
export interface Target {
  key: string;
  label: string;
  server: Server;
  path: string;
  body: Buffer;
  /** The method label the service counts the calls under, to check every answer's grpc-status (service only). */
  metricsMethod?: string;
  /** The Connect JSON form on the HTTP listener (HTTP/1.1). */
  connectJson?: boolean;
}

export interface Measurement extends H2loadResult {
  /** CPU time (user + system) the server process spent per call, µs. */
  cpuUsPerCall: number;
  /**
   * The service only, from its own /metrics (prom-client's default metrics): event-loop delay over the run
   * (perf_hooks monitorEventLoopDelay, reset at each scrape), p99 and max in ms; and garbage collection in
   * the run (nodejs_gc_duration_seconds), µs per call and collections per 1,000 calls (every kind, and
   * full mark-compacts alone). For a bare server the GC figures come from its `--trace-gc` lines instead (one line
   * a collection, pauses as V8 prints them).
   */
  loopP99Ms?: number;
  loopMaxMs?: number;
  gcUsPerCall?: number;
  gcPer1000?: number;
  majorPer1000?: number;
}

interface Scrape {
  answered: Record<string, number>;
  loopP99Ms: number;
  loopMaxMs: number;
  gcSeconds: number;
  gcCount: number;
  majorCount: number;
}

function sumOf(text: string, name: string): number {
  let total = 0;
  for (const m of text.matchAll(new RegExp(`^${name}(?:\\{[^}]*\\})? ([\\d.e+-]+)$`, "gm"))) total += Number(m[1]);
  return total;
}

export interface HotPathResult {
  rounds: Array<Record<string, Measurement>>;
  medians: Record<string, Measurement>;
  /** Per-round ratios, then their median: `a` over `b`. */
  ratio(a: string, b: string, f: (m: Measurement) => number): number;
  peakRssMiB: number;
  profiles: Record<string, ProfileSummary>;
}

function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
  // utime and stime, in clock ticks of 10 ms.
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

export function peakRssMiB(pid: number): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  return m ? Number(m[1]) / 1024 : NaN;
}

/** Calls the service answered, by code, for one method, and its event-loop delay and GC, from its /metrics. */
async function scrape(server: Server, method: string): Promise<Scrape> {
  const text = await (await fetch(`${server.adminUrl}/metrics`)).text();
  const out: Record<string, number> = {};
  const re = new RegExp(`^token_service_rpc_requests_total\\{method="${method.replace(/[.]/g, "\\.")}",code="([a-z_]+)"\\} (\\d+)$`, "gm");
  for (const m of text.matchAll(re)) out[m[1]!] = Number(m[2]);
  return {
    answered: out,
    loopP99Ms: sumOf(text, "nodejs_eventloop_lag_p99_seconds") * 1000,
    loopMaxMs: sumOf(text, "nodejs_eventloop_lag_max_seconds") * 1000,
    gcSeconds: sumOf(text, "nodejs_gc_duration_seconds_sum"),
    gcCount: sumOf(text, "nodejs_gc_duration_seconds_count"),
    majorCount: Number(/^nodejs_gc_duration_seconds_count\{kind="major"\} (\d+)$/m.exec(text)?.[1] ?? 0),
  };
}

function specFor(t: Target, requests = REQUESTS): H2loadSpec {
  const url = t.connectJson ? t.server.httpUrl! : t.server.url;
  return {
    url,
    path: t.path,
    body: t.body,
    headers: t.connectJson ? { "content-type": "application/json" } : GRPC_HEADERS,
    requests,
    clients: CLIENTS,
    streams: STREAMS,
    h1: t.connectJson,
  };
}

/** The h2load command line of a target, for the report. */
export function commandOf(t: Target): string {
  return `h2load ${h2loadArgs(specFor(t)).map((a) => (a.includes(" ") ? `'${a}'` : a)).join(" ")} -d BODY URL${t.path}`;
}

/** One h2load run, its grpc-status check, and the CPU the server spent. */
export async function measure(t: Target, requests = REQUESTS): Promise<Measurement> {
  const before = t.metricsMethod ? await scrape(t.server, t.metricsMethod) : undefined;
  const traceBefore = !t.metricsMethod && t.server.gcTrace ? t.server.gcTrace().length : undefined;
  const cpu0 = cpuMs(t.server.pid);
  const r = await runH2load(specFor(t, requests));
  const cpu = cpuMs(t.server.pid) - cpu0;
  if (r.succeeded !== r.requests) throw new Error(`${t.label}: ${r.requests - r.succeeded} of ${r.requests} calls failed at the HTTP level`);
  const m: Measurement = { ...r, cpuUsPerCall: (cpu * 1000) / r.requests };
  if (traceBefore !== undefined) {
    const g = gcSummary(t.server.gcTrace!().slice(traceBefore));
    Object.assign(m, {
      gcUsPerCall: (g.totalMs * 1000) / r.requests,
      gcPer1000: ((g.scavenges + g.fulls) * 1000) / r.requests,
      majorPer1000: (g.fulls * 1000) / r.requests,
    });
  }
  if (before) {
    const after = await scrape(t.server, t.metricsMethod!);
    const ok = (after.answered.ok ?? 0) - (before.answered.ok ?? 0);
    if (ok !== r.requests) {
      throw new Error(`${t.label}: the service answered ${ok} of ${r.requests} calls OK (${JSON.stringify(after.answered)} after, ${JSON.stringify(before.answered)} before)`);
    }
    Object.assign(m, {
      loopP99Ms: after.loopP99Ms,
      loopMaxMs: after.loopMaxMs,
      gcUsPerCall: ((after.gcSeconds - before.gcSeconds) * 1e6) / r.requests,
      gcPer1000: ((after.gcCount - before.gcCount) * 1000) / r.requests,
      majorPer1000: ((after.majorCount - before.majorCount) * 1000) / r.requests,
    });
  }
  return m;
}

/**
 * Starts bench/bare-servers.ts `kind` as its own process (profiled when `profileDir` is given), with `--trace-gc`:
 * its collections, read from its stdout, stand in for the /metrics a bare server does not have.
 */
export async function startBare(kind: "http2" | "grpc-js", profileDir?: string): Promise<Server & { child: ChildProcess }> {
  const script = fileURLToPath(new URL("./bare-servers.ts", import.meta.url));
  const child = spawn(
    process.execPath,
    // Pretenuring off, as in the service (NODE_HEAP_ARGS): a bare server falls into the same slow state without it.
    [NO_PRETENURING, "--trace-gc", ...(profileDir ? ["--cpu-prof", `--cpu-prof-dir=${profileDir}`] : []), "--import", "tsx", script, kind],
    { stdio: ["ignore", "pipe", "inherit"] },
  );
  let out = "";
  // The port is the one line that is only a number; V8's lines may come before it.
  const portLine = () => /^(\d+)$/m.exec(out)?.[1];
  // Resolves with the port, or rejects when the server exits (by a code or a signal) before it prints one.
  const port = await new Promise<number>((resolve, reject) => {
    const onExit = (code: number | null, signal: NodeJS.Signals | null) => reject(new Error(`bare ${kind} server exited with ${code ?? signal}`));
    child.once("exit", onExit);
    child.once("error", reject);
    child.stdout!.setEncoding("utf8").on("data", (d: string) => {
      out += d;
      const found = portLine();
      if (found === undefined) return;
      child.off("exit", onExit);
      child.off("error", reject);
      resolve(Number(found));
    });
  });
  return { name: `bare ${kind}`, pid: child.pid!, url: `http://127.0.0.1:${port}`, child, gcTrace: () => out };
}

/** `--trace-gc` lines: collections by kind, their pauses, over a process's life. */
export function gcSummary(stdout: string): { scavenges: number; scavengeMaxMs: number; fulls: number; fullMaxMs: number; totalMs: number } {
  const out = { scavenges: 0, scavengeMaxMs: 0, fulls: 0, fullMaxMs: 0, totalMs: 0 };
  for (const m of stdout.matchAll(/ ms: (Scavenge|Mark-Compact|Mark-sweep|Minor Mark-Compact|Minor Mark-Sweep)[^,\n]*, ([\d.]+) \/ [\d.]+ ms/g)) {
    const ms = Number(m[2]);
    out.totalMs += ms;
    if (m[1]!.startsWith("Scavenge") || m[1]!.startsWith("Minor")) {
      out.scavenges++;
      out.scavengeMaxMs = Math.max(out.scavengeMaxMs, ms);
    } else {
      out.fulls++;
      out.fullMaxMs = Math.max(out.fullMaxMs, ms);
    }
  }
  return out;
}

export const bodies = { empty: EMPTY_MESSAGE };
export const paths = { health: HEALTH, getToken: GET_TOKEN };

/**
 * Runs `rounds` paired rounds over `targets` (after one warm-up run of each),
 * rotating the order each round so that no target always runs first.
 * `settleMs` waits after each run, for work a server goes on doing after
 * its answers (exporting spans) not to land in the next target's run.
 */
export async function runRounds(targets: Target[], rounds: number, log: (line: string) => void, settleMs = 0): Promise<HotPathResult["rounds"]> {
  for (const t of targets) await measure(t, REQUESTS / 2);
  const out: HotPathResult["rounds"] = [];
  for (let r = 0; r < rounds; r++) {
    const round: Record<string, Measurement> = {};
    for (let i = 0; i < targets.length; i++) {
      const t = targets[(i + r) % targets.length]!;
      round[t.key] = await measure(t);
      if (settleMs > 0) await sleep(settleMs);
    }
    out.push(round);
    log(
      `  round ${r + 1}: ${targets
        .map((t) => `${t.key} ${Math.round(round[t.key]!.reqPerSec)}/s ${fmt(round[t.key]!.cpuUsPerCall, 0)} µs`)
        .join(", ")}`,
    );
  }
  return out;
}

/** Medians of each figure over the rounds, and paired ratios. */
export function summarize(rounds: HotPathResult["rounds"]): Pick<HotPathResult, "medians" | "ratio"> {
  const keys = Object.keys(rounds[0] ?? {});
  const medians: Record<string, Measurement> = {};
  for (const k of keys) {
    const pick = (f: (m: Measurement) => number) => median(rounds.map((r) => f(r[k]!)));
    medians[k] = {
      requests: rounds.reduce((n, r) => n + r[k]!.requests, 0),
      succeeded: rounds.reduce((n, r) => n + r[k]!.succeeded, 0),
      failed: rounds.reduce((n, r) => n + r[k]!.failed, 0),
      reqPerSec: pick((m) => m.reqPerSec),
      p50Ms: pick((m) => m.p50Ms),
      p99Ms: pick((m) => m.p99Ms),
      p999Ms: pick((m) => m.p999Ms),
      ...(rounds[0]![k]!.loopP99Ms !== undefined ? { loopP99Ms: pick((m) => m.loopP99Ms!), loopMaxMs: pick((m) => m.loopMaxMs!) } : {}),
      ...(rounds[0]![k]!.gcUsPerCall !== undefined
        ? {
            gcUsPerCall: pick((m) => m.gcUsPerCall!),
            gcPer1000: pick((m) => m.gcPer1000!),
            majorPer1000: pick((m) => m.majorPer1000!),
          }
        : {}),
      maxMs: Math.max(...rounds.map((r) => r[k]!.maxMs)),
      cpuUsPerCall: pick((m) => m.cpuUsPerCall),
    };
  }
  return {
    medians,
    ratio: (a, b, f) => median(rounds.map((r) => f(r[a]!) / f(r[b]!))),
  };
}

/**
 * Profiles: `runs` maps a label to the targets measured (once each) on
 * servers started with --cpu-prof writing to `profileDirs[server name]`; the
 * servers are stopped by `stop`, then each label's samples are summed.
 */
export async function profileRuns(
  runs: Array<{ label: string; target: Target; profileDir: string }>,
  stop: () => Promise<Map<string, number>>,
): Promise<Record<string, ProfileSummary>> {
  const windows: Array<{ label: string; dir: string; window: [number, number] }> = [];
  for (const { label, target, profileDir } of runs) {
    await measure(target, REQUESTS / 2);
    const from = Date.now();
    await measure(target);
    windows.push({ label, dir: profileDir, window: [from, Date.now()] });
  }
  const stoppedAt = await stop();
  const out: Record<string, ProfileSummary> = {};
  for (const w of windows) {
    const file = readdirSync(w.dir).find((f) => f.endsWith(".cpuprofile"));
    if (!file) throw new Error(`no CPU profile in ${w.dir}`);
    out[w.label] = summarizeProfiles([{ path: join(w.dir, file), stoppedAt: stoppedAt.get(w.dir)! }], [w.window]);
  }
  return out;
}

export function tempDir(): string {
  return mkdtempSync(join(tmpdir(), "token-service-hot-"));
}

/** Side-by-side profile table of several runs: category → share of busy CPU, and µs per call. */
export function profileComparison(profiles: Record<string, ProfileSummary>, calls: number): string {
  const labels = Object.keys(profiles);
  const categories = [...new Set(labels.flatMap((l) => profiles[l]!.categories.map(([c]) => c)))];
  const us = (l: string, c: string) => ((profiles[l]!.categories.find(([n]) => n === c)?.[1] ?? 0) * 1000) / calls;
  categories.sort((a, b) => us(labels[labels.length - 1]!, b) - us(labels[labels.length - 1]!, a));
  const rows = categories.map((c) => `| ${c} | ${labels.map((l) => fmt(us(l, c), 1)).join(" | ")} |`);
  const busy = labels.map((l) => `**${fmt((profiles[l]!.busyMs * 1000) / calls, 1)}**`).join(" | ");
  return [
    `| µs of CPU per call, by kind of code | ${labels.join(" | ")} |`,
    `|---|${labels.map(() => "---").join("|")}|`,
    ...rows,
    `| **busy, per call** | ${busy} |`,
  ].join("\n");
}

export { profileShare, profileTable, RPC_STACK_CATEGORIES, REQUESTS };
