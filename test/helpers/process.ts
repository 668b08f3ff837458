import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";

const mainJs = fileURLToPath(new URL("../../dist/src/main.js", import.meta.url));

/** The built service running as its own process (run `npm run build` first; `npm test` does). */
export interface ServiceProcess {
  readonly child: ChildProcess;
  /** http://127.0.0.1:PORT of the gRPC listener, once listening. */
  readonly url: string;
  /** http://127.0.0.1:PORT of the HTTP listener (Connect, gRPC-Web), if on. */
  readonly httpUrl: string | undefined;
  /** http://127.0.0.1:PORT of the admin listener (/metrics, /healthz, /readyz), if on. */
  readonly adminUrl: string | undefined;
  /** Every JSON line written to stdout so far. */
  lines(): Array<Record<string, unknown>>;
  stdout(): string;
  stderr(): string;
  /** Resolves with the exit code (or signal name) when the process ends. */
  readonly exited: Promise<number | string>;
  /** Waits for a log line matching `predicate`. */
  waitForLine(predicate: (line: Record<string, unknown>) => boolean, timeoutMs?: number): Promise<Record<string, unknown>>;
  kill(signal?: NodeJS.Signals): void;
}

/**
 * V8's allocation-site pretenuring off: after a burst of concurrent calls it can decide to allocate every call's
 * objects in the old generation, and the process stays several times slower for its whole life (docs/performance.md,
 * "Pretenuring"). The bare servers the benchmarks compare against run with it too.
 */
export const NO_PRETENURING = "--no-allocation-site-pretenuring";

/** The same V8 heap flags as `npm start`, the image and the Kubernetes example (see docs/performance.md, "Memory"). */
export const NODE_HEAP_ARGS = ["--max-old-space-size=160", "--max-semi-space-size=16", NO_PRETENURING];

/**
 * Starts `node dist/src/main.js [args]` with `env` added to a minimal
 * environment and waits for its "listening" line (unless `expectListening`
 * is false, for commands that exit).
 */
export async function spawnService(
  env: Record<string, string>,
  options: {
    args?: string[];
    expectListening?: boolean;
    cwd?: string;
    nodeArgs?: string[];
    /** Another build's main.js (a benchmark baseline). */
    script?: string;
    /** V8 heap flags instead of NODE_HEAP_ARGS (the heap-settings benchmark). */
    heapArgs?: string[];
  } = {},
): Promise<ServiceProcess> {
  const child = spawn(process.execPath, [...(options.heapArgs ?? NODE_HEAP_ARGS), ...(options.nodeArgs ?? []), options.script ?? mainJs, ...(options.args ?? [])], {
    env: { PATH: process.env.PATH ?? "", TOKEN_SERVICE_ADDR: "127.0.0.1:0", TOKEN_SERVICE_HTTP_ADDR: "127.0.0.1:0", TOKEN_SERVICE_ADMIN_ADDR: "127.0.0.1:0", ...env },
    cwd: options.cwd,
    stdio: ["ignore", "pipe", "pipe"],
  });
  let out = "";
  let err = "";
  const waiters = new Set<() => void>();
  child.stdout!.setEncoding("utf8").on("data", (d: string) => {
    out += d;
    for (const w of waiters) w();
  });
  child.stderr!.setEncoding("utf8").on("data", (d: string) => (err += d));
  const exited = once(child, "exit").then(([code, signal]) => (code ?? signal) as number | string);
  const lines = () =>
    out
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .flatMap((l) => {
        try {
          return [JSON.parse(l) as Record<string, unknown>];
        } catch {
          return [];
        }
      });
  const waitForLine = (predicate: (line: Record<string, unknown>) => boolean, timeoutMs = 30_000) =>
    new Promise<Record<string, unknown>>((resolve, reject) => {
      const check = () => {
        const found = lines().find(predicate);
        if (found) {
          waiters.delete(check);
          clearTimeout(timer);
          resolve(found);
        }
      };
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no matching log line within ${timeoutMs} ms; stderr: ${err.slice(-2000)}`));
      }, timeoutMs);
      waiters.add(check);
      void exited.then(() => {
        if (waiters.has(check)) {
          waiters.delete(check);
          clearTimeout(timer);
          reject(new Error(`process exited before the line appeared; stderr: ${err.slice(-2000)}`));
        }
      });
      check();
    });

  let url = "";
  let httpUrl: string | undefined;
  let adminUrl: string | undefined;
  if (options.expectListening !== false) {
    let line: Record<string, unknown>;
    try {
      line = await waitForLine((l) => l.msg === "token service listening");
    } catch (e) {
      // The caller gets no handle to stop it: stop it here, so no process outlives a failed start.
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
      throw e;
    }
    url = `http://${String(line.addr)}`;
    if (typeof line.httpAddr === "string" && line.httpAddr !== "off") httpUrl = `http://${line.httpAddr}`;
    if (typeof line.admin === "string" && line.admin !== "off") adminUrl = `http://${line.admin}`;
  }
  return {
    child,
    url,
    httpUrl,
    adminUrl,
    lines,
    stdout: () => out,
    stderr: () => err,
    exited,
    waitForLine,
    kill: (signal = "SIGTERM") => {
      child.kill(signal);
    },
  };
}
