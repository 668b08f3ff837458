/**
 * Reads V8 CPU profiles (`node --cpu-prof`) and tells where a process spent
 * its CPU inside given wall-clock windows, by kind of code: the RPC stack,
 * garbage collection, the service's own code, the database drivers, and so on.
 */
import { readFileSync } from "node:fs";

interface CpuProfile {
  nodes: Array<{ id: number; callFrame: { functionName: string; url: string } }>;
  /** Microseconds, on the profiled process's monotonic clock. */
  startTime: number;
  endTime: number;
  samples: number[];
  timeDeltas: number[];
}

/** A profile file and the wall-clock time (epoch ms) at which its process stopped profiling. */
export interface ProfileFile {
  path: string;
  stoppedAt: number;
}

export interface ProfileSummary {
  /** Busy (non-idle) CPU time inside the windows, all profiles together. */
  busyMs: number;
  /** Category → milliseconds, largest first. */
  categories: Array<[string, number]>;
  /** The busiest functions: "name (file)" → milliseconds, largest first. */
  functions: Array<[string, number]>;
}

/** Kinds of code, by the file a sampled function comes from; the first that matches wins. */
const CATEGORIES: Array<[string, RegExp]> = [
  ["token service code (src/)", /\/dist\/src\//],
  ["logging (pino)", /node_modules\/(pino|@pinojs|sonic-boom|fast-redact|thread-stream)/],
  ["metrics (prom-client)", /node_modules\/prom-client\//],
  ["database (pg, knex, MikroORM, libsql)", /node_modules\/(pg|pg-[a-z-]+|knex|tarn|@mikro-orm\/[a-z]+|libsql|@libsql\/[a-z-]+)\//],
  ["provider client (openid-client, undici)", /node_modules\/(openid-client|oauth4webapi|jose)\/|node:internal\/deps\/undici/],
  ["gRPC (grpc-js, grpc-health-check, @grpc/reflection)", /node_modules\/(@grpc\/[a-z-]+|grpc-health-check)\//],
  ["Connect (connect-node)", /node_modules\/@connectrpc\//],
  ["protobuf (protobuf-es, protobufjs)", /node_modules\/(@bufbuild|protobufjs|@protobufjs)\//],
  [
    "Node HTTP/2, HTTP/1.1, streams, events, buffers",
    /node:internal\/(http2|http|_http|streams|abort_controller|event_target|per_context\/domexception|webstreams|url|buffer|encoding|process\/task_queues|timers)|node:(events|buffer|stream|http|_http_[a-z]+|net|timers)/,
  ],
];

/** Categories that belong to the RPC stack (the part a bare server has too), for the shares in reports. */
export const RPC_STACK_CATEGORIES = new Set([
  "gRPC (grpc-js, grpc-health-check, @grpc/reflection)",
  "Connect (connect-node)",
  "protobuf (protobuf-es, protobufjs)",
  "Node HTTP/2, HTTP/1.1, streams, events, buffers",
]);

function categoryOf(functionName: string, url: string): string {
  if (functionName === "(garbage collector)") return "garbage collection";
  for (const [name, re] of CATEGORIES) if (re.test(url)) return name;
  if (functionName === "(program)" || functionName === "runMicrotasks" || functionName === "(root)") return "V8 and the event loop (program, microtasks)";
  return "other Node internals (native calls, write syscalls)";
}

/**
 * Sums the busy samples of each profile that fall inside `windows` ([from, to]
 * in epoch ms). A sample's wall-clock time is placed from the profile's end,
 * which the caller knows as `stoppedAt`: accurate to a few milliseconds.
 */
export function summarizeProfiles(files: ProfileFile[], windows: Array<[number, number]>): ProfileSummary {
  const categories = new Map<string, number>();
  const functions = new Map<string, number>();
  let busy = 0;
  for (const file of files) {
    const profile = JSON.parse(readFileSync(file.path, "utf8")) as CpuProfile;
    const frames = new Map(profile.nodes.map((n) => [n.id, n.callFrame]));
    let t = profile.startTime;
    for (let i = 0; i < profile.samples.length; i++) {
      t += profile.timeDeltas[i] ?? 0;
      const us = profile.timeDeltas[i + 1] ?? 0; // this sample stands for the time until the next one
      const wall = file.stoppedAt - (profile.endTime - t) / 1000;
      if (!windows.some(([from, to]) => wall >= from && wall <= to)) continue;
      const frame = frames.get(profile.samples[i]!);
      if (!frame || frame.functionName === "(idle)") continue;
      const ms = us / 1000;
      busy += ms;
      const category = categoryOf(frame.functionName, frame.url);
      categories.set(category, (categories.get(category) ?? 0) + ms);
      const where = frame.url.replace(/^.*node_modules\//, "").replace(/^.*\/dist\//, "").replace(/^file:\/\//, "");
      const key = `${frame.functionName || "(anonymous)"}${where ? ` (${where})` : ""}`;
      functions.set(key, (functions.get(key) ?? 0) + ms);
    }
  }
  const sorted = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]);
  return { busyMs: busy, categories: sorted(categories), functions: sorted(functions).slice(0, Number(process.env.PROFILE_TOP ?? 12)) };
}

/** A Markdown table of the categories, with shares of the busy time. */
export function profileTable(summary: ProfileSummary, total = "busy, all replicas"): string {
  const pct = (ms: number) => `${((100 * ms) / summary.busyMs).toFixed(1)} %`;
  return [
    "| where the CPU went | ms | share |",
    "|---|---|---|",
    ...summary.categories.map(([name, ms]) => `| ${name} | ${ms.toFixed(0)} | ${pct(ms)} |`),
    `| **${total}** | **${summary.busyMs.toFixed(0)}** | 100 % |`,
  ].join("\n");
}

/** Share (percent) of the busy time spent in the categories `pred` picks. */
export function profileShare(summary: ProfileSummary, pred: (category: string) => boolean): number {
  return (100 * summary.categories.filter(([n]) => pred(n)).reduce((a, [, ms]) => a + ms, 0)) / summary.busyMs;
}
