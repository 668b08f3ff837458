import type { Reporter, TestModule } from "vitest/node";
import { SKIP_MARK } from "./tools.js";

/** One optional suite that did not run, and why. */
export interface SkippedSuite {
  /** The test file, relative to the project. */
  readonly file: string;
  /** The suite's or test's name, without the skip mark. */
  readonly name: string;
  /** The missing tool and the Debian package that brings it. */
  readonly reason: string;
  /** How many tests it skipped. */
  readonly tests: number;
}

const MARKED = new RegExp(`^(.*?)\\s*\\(${SKIP_MARK} (.*)\\)$`);

/** The optional suites skipped in a run: one entry per file and missing tool. */
export function skippedSuites(modules: ReadonlyArray<TestModule>): SkippedSuite[] {
  const found = new Map<string, { file: string; name: string; reason: string; tests: number }>();
  for (const module of modules) {
    for (const test of module.children.allTests()) {
      if (test.result().state !== "skipped") continue;
      const segments = [...ancestorNames(test), test.name];
      const marked = segments.map((s) => MARKED.exec(s)).find((m) => m !== null);
      if (!marked) continue;
      const [, name, reason] = marked as unknown as [string, string, string];
      const key = `${module.relativeModuleId}\0${reason}`;
      const entry = found.get(key);
      if (entry) entry.tests += 1;
      else found.set(key, { file: module.relativeModuleId, name, reason, tests: 1 });
    }
  }
  return [...found.values()];
}

function ancestorNames(test: { parent: { type: string; name?: string; parent?: unknown } }): string[] {
  const names: string[] = [];
  let node = test.parent as { type: string; name?: string; parent?: unknown };
  while (node.type === "suite") {
    names.unshift(node.name ?? "");
    node = node.parent as typeof node;
  }
  return names;
}

/**
 * Prints, after vitest's own summary, one line for each optional suite that
 * was skipped because a tool npm cannot bring is missing, with the reason.
 */
export default class SkipReporter implements Reporter {
  onTestRunEnd(modules: ReadonlyArray<TestModule>): void {
    const skipped = skippedSuites(modules);
    if (skipped.length === 0) return;
    const lines = skipped.map(
      (s) => `  ${s.file}: "${s.name}" (${s.tests} ${s.tests === 1 ? "test" : "tests"}) needs ${s.reason}`,
    );
    process.stdout.write(
      `\nOptional suites skipped (a tool npm cannot bring is missing; CI=true fails instead):\n${lines.join("\n")}\n`,
    );
  }
}
