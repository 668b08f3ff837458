import { describe, expect, it } from "vitest";
import { createLogger, redactSecrets } from "../../src/logger.js";
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
