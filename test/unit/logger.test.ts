import { execFile as execFileCb } from "node:child_process";
import { mkdtempSync, openSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { createLogger, flushLog, redactSecrets, stdoutDestination } from "../../src/logger.js";
import { LogSink } from "../helpers/service.js";

describe("logger redaction", () => {
  it("redacts secret fields at the top level and one level down, in log calls and child bindings", () => {
    const sink = new LogSink();
    const logger = createLogger("info", sink);
    logger.info({ accessToken: "AT-1", body: { refresh_token: "RT-1", kept: "k" }, authorization: "Bearer CRED-1", n: 1 }, "one");
    logger.child({ sessionId: "SID-1", provider: "corp" }).warn({ err: { clientSecret: "CS-1", code: "x" } }, "two");
    logger.info({ tokens: { accessToken: "AT-2" }, list: [{ token: "deep-in-array" }] }, "three");
    const text = sink.text();
    for (const secret of ["AT-1", "RT-1", "CRED-1", "SID-1", "CS-1", "AT-2"]) expect(text).not.toContain(secret);
    const [one, two, three] = sink.lines();
    expect(one).toMatchObject({ accessToken: "[redacted]", body: { refresh_token: "[redacted]", kept: "k" }, authorization: "[redacted]", n: 1 });
    expect(two).toMatchObject({ sessionId: "[redacted]", provider: "corp", err: { clientSecret: "[redacted]", code: "x" }, level: "warn" });
    expect(three).toMatchObject({ tokens: "[redacted]" });
  });

  it("returns the same object when there is nothing to redact, and never changes what it was given", () => {
    const clean = { rpc: "x/GetToken", ms: 1, nested: { code: "ok" } };
    expect(redactSecrets(clean)).toBe(clean);
    const dirty = { nested: { token: "T" }, other: 1 };
    const out = redactSecrets(dirty);
    expect(out).toEqual({ nested: { token: "[redacted]" }, other: 1 });
    expect(dirty.nested.token).toBe("T");
  });
});

const execFile = promisify(execFileCb);

describe("the log's standard output", () => {
  it("writes every line whole and in order, multi-byte text included, while earlier writes are still in flight", async () => {
    const dir = mkdtempSync(join(tmpdir(), "token-service-log-"));
    try {
      const file = join(dir, "out.log");
      const fd = openSync(file, "w");
      const dest = stdoutDestination(fd);
      const logger = createLogger("info", dest);
      for (let i = 0; i < 20_000; i++) logger.info({ n: i, text: i % 7 === 0 ? "naïve – 日本語 ✓" : "plain" }, "line");
      // flushSync writes what is waiting; a write already in flight lands on its own.
      dest.flushSync();
      const deadline = Date.now() + 10_000;
      while (readFileSync(file, "utf8").split("\n").length <= 20_000 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 10));
      const lines = readFileSync(file, "utf8").split("\n");
      expect(lines.pop()).toBe("");
      expect(lines).toHaveLength(20_000);
      lines.forEach((line, i) => expect(JSON.parse(line)).toMatchObject({ n: i, msg: "line", text: i % 7 === 0 ? "naïve – 日本語 ✓" : "plain" }));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("flush waits until every line given to it is written", async () => {
    const dir = mkdtempSync(join(tmpdir(), "token-service-log-"));
    try {
      const file = join(dir, "out.log");
      const dest = stdoutDestination(openSync(file, "w"));
      const logger = createLogger("info", dest);
      for (let round = 0; round < 3; round++) {
        for (let i = 0; i < 5000; i++) logger.info({ round, n: i }, "line");
        await flushLog(logger, 10_000);
        // Nothing left in flight or waiting: the file has every line so far, in order.
        const lines = readFileSync(file, "utf8").split("\n").filter((l) => l !== "");
        expect(lines).toHaveLength((round + 1) * 5000);
        expect(JSON.parse(lines.at(-1)!)).toMatchObject({ round, n: 4999 });
      }
      // With nothing unwritten it answers at once.
      let called = false;
      dest.flush(() => (called = true));
      expect(called).toBe(true);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("a shutdown that flushes before exiting writes its last lines in order", async () => {
    const logger = new URL("../../dist/src/logger.js", import.meta.url).href;
    const script = `import { createLogger, flushLog } from ${JSON.stringify(logger)};
const log = createLogger("info");
for (let i = 0; i < 5000; i++) log.info({ n: i, pad: "x".repeat(200) }, "working");
log.info({ n: 5000 }, "shutting down");
log.info({ n: 5001 }, "shut down");
await flushLog(log, 10000);
process.exit(0);`;
    const { stdout } = await execFile(process.execPath, ["--input-type=module", "-e", script], { maxBuffer: 64 << 20 });
    const ns = stdout.split("\n").filter((l) => l !== "").map((l) => (JSON.parse(l) as { n: number }).n);
    expect(ns).toEqual(Array.from({ length: 5002 }, (_, i) => i));
  });

  it("is flushed when the process exits at once after logging", async () => {
    const logger = new URL("../../dist/src/logger.js", import.meta.url).href;
    const script = `import { createLogger } from ${JSON.stringify(logger)};
const log = createLogger("info");
for (let i = 0; i < 5000; i++) log.info({ n: i, pad: "x".repeat(200) }, "before exit");
process.exit(0);`;
    const { stdout } = await execFile(process.execPath, ["--input-type=module", "-e", script], { maxBuffer: 64 << 20 });
    const lines = stdout.split("\n").filter((l) => l !== "");
    expect(lines).toHaveLength(5000);
    expect(JSON.parse(lines[4999]!)).toMatchObject({ n: 4999, msg: "before exit" });
  });
});
