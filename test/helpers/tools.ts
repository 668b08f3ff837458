import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";

/**
 * Tests that need a tool npm cannot bring (h2load, Prometheus, Go, Debian's
 * python3 with grpcio, protoc) ask for it here. On a machine without the
 * tool the suite is skipped, with a notice naming the tool and the Debian
 * package that brings it; under CI=true a missing tool is a failure, so CI
 * can never go green by skipping.
 *
 * A skipped suite carries `SKIP_MARK` and its reason in its name: the
 * end-of-run reporter (test/helpers/skip-reporter.ts) finds them there.
 */

/** One thing a suite needs, and the Debian package that brings it. */
export interface Tool {
  /** What a person would look for: a command, a file, a Python module. */
  readonly name: string;
  /** The Debian package(s) that bring it. */
  readonly debian: string;
  /** True when it is here and usable. */
  present(): boolean;
}

/** Marks a skipped optional suite's name; the reason follows up to the closing parenthesis. */
export const SKIP_MARK = "SKIPPED, needs";

/** True under CI=true (or CI=1), as `.ci/run` runs. */
export function inCi(env: NodeJS.ProcessEnv = process.env): boolean {
  return /^(true|1)$/i.test(env.CI ?? "");
}

/** A command found on PATH. */
export function command(name: string, debian: string): Tool {
  return {
    name,
    debian,
    present: () => spawnSync("bash", ["-c", `command -v -- '${name}'`], { stdio: "ignore" }).status === 0,
  };
}

/** A file or directory at a fixed path. */
export function fileAt(path: string, debian: string): Tool {
  return { name: path, debian, present: () => existsSync(path) };
}

/** A command that must start and exit 0 (a runtime with its modules, say). */
export function runs(name: string, debian: string, cmd: string, args: string[]): Tool {
  return {
    name,
    debian,
    present: () => {
      const r = spawnSync(cmd, args, { stdio: "ignore", timeout: 30_000 });
      return r.error === undefined && r.status === 0;
    },
  };
}

/** Why a suite cannot run here: the first missing tool, named with its package; undefined when all are present. */
export function missing(tools: readonly Tool[]): string | undefined {
  for (const t of tools) if (!t.present()) return `${t.name} (Debian package ${t.debian})`;
  return undefined;
}

/** What a suite that needs `tools` should do on this machine. */
export interface Requirement {
  /** Skip the suite: a tool is missing and this is not CI. */
  readonly skip: boolean;
  /** The missing tool and its package, or undefined. */
  readonly reason: string | undefined;
  /** Appended to the suite's name: empty, or the skip mark with the reason. */
  readonly suffix: string;
}

/**
 * Checks the tools a suite needs. Missing outside CI: a notice on stderr and
 * `skip` true. Missing under CI=true: throws, which fails the test file at
 * collection with the tool and its package named.
 */
export function requireTools(suite: string, tools: readonly Tool[], env: NodeJS.ProcessEnv = process.env): Requirement {
  const reason = missing(tools);
  if (reason === undefined) return { skip: false, reason, suffix: "" };
  if (inCi(env)) {
    throw new Error(`${suite} needs ${reason}, which is missing; under CI=true a missing tool fails the run (.ci/run installs it)`);
  }
  console.warn(`${suite}: skipped, needs ${reason}`);
  return { skip: true, reason, suffix: ` (${SKIP_MARK} ${reason})` };
}
