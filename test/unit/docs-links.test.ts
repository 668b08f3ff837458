import { existsSync, readdirSync, readFileSync, statSync } from "node:fs";
import { dirname, join, relative, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { describe, expect, it } from "vitest";

/**
 * Every relative link and `#anchor` in README.md and docs/ resolves: the
 * file (or directory) exists, and an anchor names a heading of the target
 * page, slugged the way GitHub does it.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** README.md and every Markdown file under docs/. */
export function documentationFiles(root: string = ROOT): string[] {
  const walk = (dir: string): string[] =>
    readdirSync(dir).flatMap((name) => {
      const path = join(dir, name);
      return statSync(path).isDirectory() ? walk(path) : name.endsWith(".md") ? [path] : [];
    });
  return [join(root, "README.md"), ...(existsSync(join(root, "docs")) ? walk(join(root, "docs")) : [])];
}

/** The text outside fenced code blocks and inline code spans. */
function prose(markdown: string): string {
  // Code blocks become blank lines, so line numbers stay right.
  return markdown.replace(/^```[\s\S]*?^```/gm, (block) => block.replace(/[^\n]/g, "")).replace(/`[^`\n]*`/g, "``");
}

/** GitHub's anchors for a page's headings: lowercased, punctuation dropped, spaces to '-', repeats suffixed -1, -2 … */
export function anchorsOf(markdown: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  const withoutCode = markdown.replace(/^```[\s\S]*?^```/gm, "");
  for (const [, text] of withoutCode.matchAll(/^#{1,6}\s+(.*?)\s*#*\s*$/gm)) {
    const base = text!
      .replace(/\[([^\]]*)\]\([^)]*\)/g, "$1")
      .toLowerCase()
      .replace(/[^\p{L}\p{N}\s_-]/gu, "")
      .replace(/\s/g, "-");
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** The relative link targets of a page (no scheme), with the line they are on. */
export function linksOf(markdown: string): Array<{ target: string; line: number }> {
  const text = prose(markdown);
  const out: Array<{ target: string; line: number }> = [];
  for (const m of text.matchAll(/\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
    const target = m[1]!;
    if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue;
    out.push({ target, line: text.slice(0, m.index).split("\n").length });
  }
  return out;
}

/** What is wrong with each link of `file` that does not resolve. */
export function brokenLinks(file: string): string[] {
  const problems: string[] = [];
  for (const { target, line } of linksOf(readFileSync(file, "utf8"))) {
    const [path, anchor] = target.split("#", 2) as [string, string | undefined];
    const where = `${relative(ROOT, file)}:${line}: ${target}`;
    const dest = path === "" ? file : resolve(dirname(file), decodeURIComponent(path));
    if (!existsSync(dest)) {
      problems.push(`${where}: no such file`);
      continue;
    }
    if (anchor === undefined) continue;
    if (!dest.endsWith(".md")) {
      problems.push(`${where}: an anchor into a file that is not Markdown`);
      continue;
    }
    if (!anchorsOf(readFileSync(dest, "utf8")).has(anchor)) problems.push(`${where}: no heading with that anchor in ${relative(ROOT, dest)}`);
  }
  return problems;
}

describe("links in README.md and docs/", () => {
  it("slugs headings as GitHub does, duplicates included", () => {
    const anchors = anchorsOf("# Tokens for one audience (RFC 8707, RFC 8693)\n## `cache:` keys\n## Refresh mode\n## Refresh mode\n```sh\n# not a heading\n```\n");
    expect([...anchors]).toEqual(["tokens-for-one-audience-rfc-8707-rfc-8693", "cache-keys", "refresh-mode", "refresh-mode-1"]);
  });

  it("finds relative links outside code, and skips URLs", () => {
    const links = linksOf("[a](docs/x.md#y) [b](https://example.com) `[c](z.md)`\n```\n[d](w.md)\n```\n[e](#top)");
    expect(links.map((l) => l.target)).toEqual(["docs/x.md#y", "#top"]);
  });

  it("has the front door and the topic pages", () => {
    const files = documentationFiles().map((f) => relative(ROOT, f));
    expect(files).toContain("README.md");
    expect(files.filter((f) => f.startsWith("docs/")).length).toBeGreaterThanOrEqual(5);
  });

  it.each(documentationFiles().map((f) => [relative(ROOT, f), f]))("every relative link and anchor in %s resolves", (_name, file) => {
    expect(linksOf(readFileSync(file, "utf8")).length).toBeGreaterThan(0);
    expect(brokenLinks(file)).toEqual([]);
  });
});
