import { afterAll, describe, expect, it } from "vitest";
import { bodies, measure, paths, startBare, type Server } from "../../bench/hot-path.js";
import { command, requireTools } from "../helpers/tools.js";

const H2LOAD = requireTools("bench-tools.test.ts", [command("h2load", "nghttp2-client")]);

/**
 * The benchmark's own tools, so that `npm run bench` does not rot between
 * runs: the bare servers answer the empty RPC, and h2load's figures are read
 * back (Debian's nghttp2-client; CI installs it).
 */
describe.skipIf(H2LOAD.skip)(`benchmark tools${H2LOAD.suffix}`, () => {
  const started: Array<Server & { child: { kill(): void } }> = [];
  afterAll(() => {
    for (const s of started) s.child.kill();
  });

  it.each(["http2", "grpc-js"] as const)("runs h2load against the bare %s server and reads its figures", async (kind) => {
    const server = await startBare(kind);
    started.push(server);
    const m = await measure({ key: kind, label: kind, server, path: paths.health, body: bodies.empty }, 400);
    expect(m.requests).toBe(400);
    expect(m.succeeded).toBe(400);
    expect(m.failed).toBe(0);
    expect(m.reqPerSec).toBeGreaterThan(0);
    expect(m.p50Ms).toBeGreaterThan(0);
    expect(m.p99Ms).toBeGreaterThanOrEqual(m.p50Ms);
    expect(m.maxMs).toBeGreaterThanOrEqual(m.p99Ms);
    expect(m.cpuUsPerCall).toBeGreaterThanOrEqual(0);
  });
});
