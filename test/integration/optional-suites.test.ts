import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * How `npm test` treats a suite whose tool npm cannot bring: a real vitest
 * run of test/fixtures/optional-suite, where one suite needs a command no
 * machine has. Without CI the run passes, counts it skipped and names the
 * tool and its Debian package at the end; under CI=true the run fails.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const FIXTURE = fileURLToPath(new URL("../fixtures/optional-suite", import.meta.url));

function vitest(env: NodeJS.ProcessEnv): Promise<{ code: number | null; out: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [`${ROOT}/node_modules/vitest/vitest.mjs`, "run", "--root", FIXTURE], {
      env: { ...env, NO_COLOR: "1", FORCE_COLOR: "0" },
      stdio: ["ignore", "pipe", "pipe"],
      timeout: 55_000,
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, out }));
  });
}

const withoutCi = (): NodeJS.ProcessEnv => {
  const env = { ...process.env };
  delete env.CI;
  return env;
};

describe("optional suites (test/helpers/tools.ts)", () => {
  it("skip without CI: the run passes, vitest counts the skip, and the last lines name the suite, the tool and its package", async () => {
    const { code, out } = await vitest(withoutCi());
    expect(code, out).toBe(0);
    expect(out).toContain("needs-missing-tool.fixture.ts: skipped, needs token-service-no-such-tool (Debian package token-service-fixture-pkg)");
    expect(out).toMatch(/Tests\s+1 passed \| 1 skipped \(2\)/);
    const summary = out.slice(out.indexOf("Optional suites skipped"));
    expect(summary).toContain(
      'needs-missing-tool.fixture.ts: "a suite that needs a missing tool" (1 test) needs token-service-no-such-tool (Debian package token-service-fixture-pkg)',
    );
    expect(out.indexOf("Optional suites skipped")).toBeGreaterThan(out.search(/Tests\s+1 passed/));
  });

  it("fail under CI=true: the run exits non-zero and says which tool is missing", async () => {
    const { code, out } = await vitest({ ...withoutCi(), CI: "true" });
    expect(code, out).not.toBe(0);
    expect(out).toContain(
      "needs-missing-tool.fixture.ts needs token-service-no-such-tool (Debian package token-service-fixture-pkg), which is missing; under CI=true a missing tool fails the run",
    );
    expect(out).not.toContain("Optional suites skipped");
  });
});
