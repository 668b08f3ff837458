import { execFile as execFileCb } from "node:child_process";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";
import { describe, expect, it } from "vitest";
import { command, requireTools } from "../helpers/tools.js";

/**
 * promtool (Debian's prometheus package) checks the alert rules and runs
 * their unit tests (deploy/prometheus/alerts.test.yaml), so `npm test`
 * covers them wherever promtool is installed; prometheus.test.ts runs them
 * on a real Prometheus.
 */

const execFile = promisify(execFileCb);
const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const PROMTOOL = process.env.PROMTOOL_BIN ?? "promtool";
const NEEDS = requireTools("alert-rules.test.ts", [command(PROMTOOL, "prometheus")]);

describe.skipIf(NEEDS.skip)(`the alert rules under promtool${NEEDS.suffix}`, () => {
  it("are valid rules", async () => {
    const { stdout } = await execFile(PROMTOOL, ["check", "rules", "deploy/prometheus/alerts.yaml"], { cwd: ROOT });
    expect(stdout).toMatch(/SUCCESS: \d+ rules found/);
  });

  it("pass their unit tests (every alert firing and quiet)", async () => {
    const { stdout } = await execFile(PROMTOOL, ["test", "rules", "deploy/prometheus/alerts.test.yaml"], { cwd: ROOT });
    expect(stdout).toContain("SUCCESS");
  });
});
