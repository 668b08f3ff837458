/**
 * Runs h2load (Debian's nghttp2-client) against one unary RPC and reads its
 * figures: requests per second from its summary, p50 and p99 from its
 * per-request log. h2load sees HTTP statuses only; callers check grpc-status
 * separately (the service counts every answer by code on /metrics).
 */
import { execFile } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { percentile } from "./report.js";

const run = promisify(execFile);

export interface H2loadSpec {
  /** http://host:port */
  url: string;
  /** /package.Service/Method */
  path: string;
  /** The request body: a gRPC frame, or a Connect JSON body. */
  body: Buffer;
  headers: Record<string, string>;
  /** -n, -c, -m: requests in all, connections, concurrent streams per connection. */
  requests: number;
  clients: number;
  streams: number;
  /** HTTP/1.1 instead of HTTP/2 (for the Connect listener in clear text). */
  h1?: boolean;
}

export interface H2loadResult {
  requests: number;
  /** HTTP 2xx answers. */
  succeeded: number;
  failed: number;
  reqPerSec: number;
  p50Ms: number;
  p99Ms: number;
  p999Ms: number;
  maxMs: number;
}

/** The h2load command line of a spec, as the report quotes it. */
export function h2loadArgs(spec: H2loadSpec): string[] {
  return [
    "-n",
    String(spec.requests),
    "-c",
    String(spec.clients),
    "-m",
    String(spec.streams),
    ...(spec.h1 ? ["--h1"] : []),
    ...Object.entries(spec.headers).flatMap(([k, v]) => ["-H", `${k}: ${v}`]),
  ];
}

export async function runH2load(spec: H2loadSpec): Promise<H2loadResult> {
  const dir = mkdtempSync(join(tmpdir(), "h2load-"));
  try {
    const bodyFile = join(dir, "body");
    const logFile = join(dir, "log");
    writeFileSync(bodyFile, spec.body);
    const { stdout } = await run("h2load", [...h2loadArgs(spec), "-d", bodyFile, `--log-file=${logFile}`, `${spec.url}${spec.path}`], {
      maxBuffer: 16 << 20,
    });
    const finished = /finished in [\d.]+\w+, ([\d.]+) req\/s/.exec(stdout);
    const counts = /requests: (\d+) total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored/.exec(stdout);
    if (!finished || !counts) throw new Error(`cannot read h2load's output:\n${stdout}`);
    const durations = readFileSync(logFile, "utf8")
      .split("\n")
      .filter((l) => l !== "")
      .map((l) => Number(l.split("\t")[2]) / 1000);
    return {
      requests: Number(counts[1]),
      succeeded: Number(counts[2]),
      failed: Number(counts[3]) + Number(counts[4]),
      reqPerSec: Number(finished[1]),
      p50Ms: percentile(durations, 50),
      p99Ms: percentile(durations, 99),
      p999Ms: percentile(durations, 99.9),
      maxMs: Math.max(...durations),
    };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
