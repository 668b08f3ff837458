/**
 * A gRPC load generator in its own process: raw node:http2 client sessions,
 * many concurrent streams each, every response checked by its grpc-status
 * trailer (not just HTTP 200). Prints one JSON result line on stdout.
 *
 * Input: one JSON argument, a LoadSpec (or "@path" of a file holding it). Modes:
 * - "burst": send `requests` calls at once (spread over targets), wait for all;
 * - "sustained": keep `concurrency` calls in flight per connection for `durationMs`.
 */
import { readFileSync } from "node:fs";
import http2 from "node:http2";
import { monitorEventLoopDelay } from "node:perf_hooks";

export interface LoadTarget {
  /** http://host:port */
  url: string;
  /** /package.Service/Method */
  path: string;
  /** gRPC-framed request body, base64; several: each call picks one at random. */
  frame: string | string[];
}

export interface LoadSpec {
  mode: "burst" | "sustained";
  targets: LoadTarget[];
  /** Connections per target. */
  connections: number;
  /** burst: total calls. */
  requests?: number;
  /** burst: streams built per event-loop turn (default 50). */
  burstBatch?: number;
  /**
   * burst: before the burst, this many calls per connection to grpc.health.v1.Health/Check, one at a
   * time, so that the burst does not pay for this fresh process's cold JIT.
   */
  warmupCalls?: number;
  /** sustained: calls in flight per connection, and how long. */
  concurrency?: number;
  durationMs?: number;
  /** sustained: discard results of the first ms (warm-up). */
  warmupMs?: number;
  /** Keep the response bodies of OK calls (base64 of the protobuf message) to compare them. */
  collectBodies?: boolean;
}

export interface LoadResult {
  /** Wall clock (epoch ms) when the first call was sent, to line results up with the service's logs. */
  startedAt: number;
  requests: number;
  ok: number;
  /** grpc-status (or "http_XXX", "stream_error") → count, for everything but 0. */
  errors: Record<string, number>;
  durationMs: number;
  throughput: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
  minMs: number;
  /** Distinct response bodies seen (only with collectBodies). */
  distinctBodies?: string[];
  /** burst: ms after the first call was sent when the first answer's headers arrived. */
  firstAnswerMs?: number;
  /**
   * burst: the longest this process's event loop was held up from the first answer on (ms, sampled every 1 ms,
   * the sampling interval taken off). A socket read's frames are handled in one go, so answers that arrive
   * together hold it up.
   */
  loopDelayMaxMs?: number;
}

function quantile(sorted: Float64Array, q: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1))]!;
}

interface Conn {
  session: http2.ClientHttp2Session;
  target: LoadTarget;
  frames: Buffer[];
}

async function connect(target: LoadTarget): Promise<Conn> {
  const session = http2.connect(target.url, { settings: { initialWindowSize: 1 << 20 } });
  session.on("error", () => undefined);
  await new Promise<void>((resolve, reject) => {
    session.once("connect", () => resolve());
    session.once("error", reject);
  });
  const frames = (Array.isArray(target.frame) ? target.frame : [target.frame]).map((f) => Buffer.from(f, "base64"));
  return { session, target, frames };
}

/**
 * One unary call; resolves to [status, latencyMs, body chunks (with the 5-byte gRPC frame header)?].
 * `onHeaders` is told when the answer's headers arrive.
 */
function call(conn: Conn, collect: boolean, onHeaders?: () => void): Promise<[string, number, Buffer[] | undefined]> {
  return new Promise((resolve) => {
    const t0 = performance.now();
    const stream = conn.session.request({
      ":method": "POST",
      ":path": conn.target.path,
      "content-type": "application/grpc",
      te: "trailers",
    });
    let httpStatus = 0;
    let grpcStatus: string | undefined;
    const chunks: Buffer[] = [];
    stream.on("response", (headers) => {
      onHeaders?.();
      httpStatus = Number(headers[":status"]);
      // Trailers-only responses carry grpc-status in the headers.
      if (headers["grpc-status"] !== undefined) grpcStatus = String(headers["grpc-status"]);
    });
    stream.on("trailers", (trailers) => {
      if (trailers["grpc-status"] !== undefined) grpcStatus = String(trailers["grpc-status"]);
    });
    if (collect) stream.on("data", (c: Buffer) => chunks.push(c));
    else stream.resume();
    stream.on("close", () => {
      const ms = performance.now() - t0;
      const status = grpcStatus ?? (httpStatus && httpStatus !== 200 ? `http_${httpStatus}` : "stream_error");
      resolve([status, ms, collect && status === "0" ? chunks : undefined]);
    });
    stream.on("error", () => undefined);
    stream.end(conn.frames.length === 1 ? conn.frames[0] : conn.frames[Math.floor(Math.random() * conn.frames.length)]);
  });
}

export async function runLoad(spec: LoadSpec): Promise<LoadResult> {
  const conns: Conn[] = [];
  for (const target of spec.targets) for (let i = 0; i < spec.connections; i++) conns.push(await connect(target));
  const latencies: number[] = [];
  const errors: Record<string, number> = {};
  // Compared once every call is done: in a burst the answers arrive together, and work done here for one would
  // be charged to the latency of those behind it.
  const bodies: Buffer[][] = [];
  let ok = 0;
  const record = ([status, ms, body]: [string, number, Buffer[] | undefined]) => {
    latencies.push(ms);
    if (status === "0") ok++;
    else errors[status] = (errors[status] ?? 0) + 1;
    if (body) bodies.push(body);
  };
  if (spec.mode === "burst" && spec.warmupCalls) {
    const health = Buffer.from([0, 0, 0, 0, 0]); // an empty HealthCheckRequest
    for (const conn of conns) {
      const probe: Conn = { ...conn, target: { ...conn.target, path: "/grpc.health.v1.Health/Check" }, frames: [health] };
      for (let i = 0; i < spec.warmupCalls; i++) await call(probe, false);
    }
  }
  const startedAt = Date.now();
  const started = performance.now();
  let measuredFrom = started;
  let firstAnswerAt: number | undefined;
  const loop = monitorEventLoopDelay({ resolution: 1 });
  if (spec.mode === "burst") {
    const onHeaders = () => {
      if (firstAnswerAt !== undefined) return;
      firstAnswerAt = performance.now();
      loop.enable();
    };
    const n = spec.requests ?? 1000;
    // Built in batches, one event-loop turn each: HTTP/2 writes leave only when the loop turns, so building
    // all n streams in one go would hold every request back until the last was built, and charge that
    // to every caller's latency. Each call's clock starts when its batch is built, just before it is written.
    const batch = spec.burstBatch ?? 50;
    const calls: Promise<void>[] = [];
    for (let i = 0; i < n; i++) {
      if (i > 0 && i % batch === 0) await new Promise((resolve) => setImmediate(resolve));
      calls.push(call(conns[i % conns.length]!, spec.collectBodies === true, onHeaders).then(record));
    }
    await Promise.all(calls);
    loop.disable();
  } else {
    const end = started + (spec.durationMs ?? 10_000);
    const warmEnd = started + (spec.warmupMs ?? 0);
    measuredFrom = warmEnd;
    const worker = async (conn: Conn) => {
      while (performance.now() < end) {
        const result = await call(conn, false);
        if (performance.now() >= warmEnd) record(result);
      }
    };
    await Promise.all(conns.flatMap((c) => Array.from({ length: spec.concurrency ?? 16 }, () => worker(c))));
  }
  const durationMs = performance.now() - measuredFrom;
  for (const c of conns) c.session.close();
  const sorted = Float64Array.from(latencies).sort();
  return {
    startedAt,
    requests: latencies.length,
    ok,
    errors,
    durationMs,
    throughput: (latencies.length / durationMs) * 1000,
    p50Ms: quantile(sorted, 0.5),
    p99Ms: quantile(sorted, 0.99),
    maxMs: sorted[sorted.length - 1] ?? NaN,
    minMs: sorted[0] ?? NaN,
    ...(spec.mode === "burst" ? { firstAnswerMs: (firstAnswerAt ?? NaN) - started, loopDelayMaxMs: Math.max(0, loop.max / 1e6 - 1) } : {}),
    ...(spec.collectBodies ? { distinctBodies: [...new Set(bodies.map((b) => Buffer.concat(b).subarray(5).toString("base64")))] } : {}),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  // The spec, or "@file" holding it (a large one: many request bodies).
  const arg = process.argv[2] ?? "{}";
  const spec = JSON.parse(arg.startsWith("@") ? readFileSync(arg.slice(1), "utf8") : arg) as LoadSpec;
  const result = await runLoad(spec);
  process.stdout.write(`${JSON.stringify(result)}\n`);
}
