import { mkdtempSync, rmSync } from "node:fs";
import { connect, constants } from "node:http2";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { NODE_HEAP_ARGS, NO_PRETENURING, spawnService, type ServiceProcess } from "../helpers/process.js";

/** An empty gRPC message: uncompressed, length 0. */
const EMPTY_FRAME = Buffer.alloc(5);

/**
 * `total` Health/Check calls over `sessions` HTTP/2 connections, `perSession` in flight on each; resolves with how
 * many answered grpc-status 0.
 */
async function burst(url: string, total: number, sessions: number, perSession: number): Promise<number> {
  let sent = 0;
  let ok = 0;
  await Promise.all(
    Array.from({ length: sessions }, async () => {
      const session = connect(url);
      session.on("error", () => undefined);
      const call = () =>
        new Promise<void>((resolve, reject) => {
          const stream = session.request({
            [constants.HTTP2_HEADER_METHOD]: "POST",
            [constants.HTTP2_HEADER_PATH]: "/grpc.health.v1.Health/Check",
            "content-type": "application/grpc",
            te: "trailers",
          });
          stream.on("trailers", (trailers) => {
            if (trailers["grpc-status"] === "0") ok++;
          });
          stream.on("error", reject);
          stream.on("close", resolve);
          stream.resume();
          stream.end(EMPTY_FRAME);
        });
      await Promise.all(
        Array.from({ length: perSession }, async () => {
          while (sent < total) {
            sent++;
            await call();
          }
        }),
      );
      session.close();
    }),
  );
  return ok;
}

/** V8's `--trace-pretenuring-statistics` lines that record a decision to allocate a site's objects in the old generation. */
function tenureDecisions(svc: ServiceProcess): string[] {
  return svc.stdout().match(/pretenuring: AllocationSite\(.*\) (undecided|maybe tenure|tenure|don't tenure) => (maybe tenure|tenure)$/gm) ?? [];
}

// docs/performance.md, "Pretenuring": after a burst of concurrent calls V8 may pretenure the sites that build each
// call, and the process stays slow for its whole life. The service runs with V8's pretenuring off.
describe("V8's allocation-site pretenuring (NODE_HEAP_ARGS)", () => {
  let dir: string;
  const procs: ServiceProcess[] = [];
  beforeAll(() => {
    dir = mkdtempSync(join(tmpdir(), "token-service-pretenuring-"));
  });
  afterAll(() => {
    for (const p of procs) p.kill("SIGKILL");
    rmSync(dir, { recursive: true, force: true });
  });

  async function burstOn(heapArgs: string[]): Promise<ServiceProcess> {
    const svc = await spawnService({}, { cwd: mkdtempSync(join(dir, "svc-")), heapArgs, nodeArgs: ["--trace-pretenuring-statistics"] });
    procs.push(svc);
    expect(await burst(svc.url, 6000, 4, 256)).toBe(6000);
    return svc;
  }

  // With the flag V8 prints no pretenuring decision at all, so this checks that the flag reaches the process as the
  // service is started (not only that it is in NODE_HEAP_ARGS); the next test shows that the burst makes decisions
  // without it, so this one fails if the flag is lost on the way.
  it("is off in the service as started: V8 marks no site for tenuring after a burst of 1,024 concurrent calls", async () => {
    expect(NODE_HEAP_ARGS).toContain(NO_PRETENURING);
    const svc = await burstOn(NODE_HEAP_ARGS);
    expect(tenureDecisions(svc)).toEqual([]);
  });

  it("with the flag left out, the same process and burst mark sites for tenuring (what the check above would see)", async () => {
    const svc = await burstOn(NODE_HEAP_ARGS.filter((a) => a !== NO_PRETENURING));
    expect(tenureDecisions(svc).length).toBeGreaterThan(0);
  });
});
