import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { fileSchema } from "../../src/config/schema.js";
import { planReload } from "../../src/reload/plan.js";

/**
 * docs/configuration.md lists every YAML key and every environment variable.
 * The key list here comes from the zod schema itself, the variable list from
 * the source: a key or variable added to the code and not to the page (or
 * left on the page after the code dropped it) fails this test by name.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const PAGE = readFileSync(join(ROOT, "docs/configuration.md"), "utf8");

/** A zod schema as far as this walk needs it: its `_zod.def`. */
interface Def {
  type: string;
  innerType?: Schema;
  defaultValue?: unknown;
  shape?: Record<string, Schema>;
  element?: Schema;
  entries?: Record<string, string>;
  checks?: Array<{ _zod: { def: { format?: string } } }>;
}
interface Schema {
  _zod: { def: Def };
}

/** One key of the YAML file that holds a value (not an object of further keys). */
export interface SchemaKey {
  path: string;
  type: string;
  default: unknown;
  enumValues: string[] | undefined;
}

const WRAPPERS = new Set(["optional", "default", "prefault", "nullable", "readonly"]);

/** Walks a zod object schema: one entry per leaf key, lists of objects as `key[].field`. */
export function schemaKeys(schema: Schema, prefix = ""): SchemaKey[] {
  return Object.entries(schema._zod.def.shape!).flatMap(([name, field]) => {
    let def = field._zod.def;
    let dflt: unknown;
    while (WRAPPERS.has(def.type)) {
      if (def.type === "default" && dflt === undefined) dflt = def.defaultValue;
      def = def.innerType!._zod.def;
    }
    const path = `${prefix}${name}`;
    if (def.type === "object") return schemaKeys({ _zod: { def } }, `${path}.`);
    if (def.type === "array") {
      let el = def.element!._zod.def;
      while (WRAPPERS.has(el.type)) el = el.innerType!._zod.def;
      if (el.type === "object") return schemaKeys({ _zod: { def: el } }, `${path}[].`);
    }
    const int = def.type === "number" && (def.checks ?? []).some((c) => /int/.test(c._zod.def.format ?? ""));
    return [{ path, type: int ? "integer" : def.type, default: dflt, enumValues: def.type === "enum" ? Object.values(def.entries!) : undefined }];
  });
}

/** Every `*.ts` file under a directory. */
function sources(dir: string): string[] {
  return readdirSync(dir).flatMap((name) => {
    const path = join(dir, name);
    return statSync(path).isDirectory() ? sources(path) : name.endsWith(".ts") ? [path] : [];
  });
}

/** Environment variables the code reads by name: `process.env.X`, `env.X`, `env?.X`, `env["X"]`. */
export function variablesRead(files: string[]): Set<string> {
  const found = new Set<string>();
  const patterns = [/\benv\??\.([A-Z][A-Z0-9_]*)\b/g, /\benv\??\.?\[\s*["'`]([A-Z][A-Z0-9_]*)["'`]\s*\]/g];
  for (const file of files) {
    const code = readFileSync(file, "utf8").replace(/\/\*[\s\S]*?\*\//g, "").replace(/^\s*\/\/.*$/gm, "");
    for (const p of patterns) for (const m of code.matchAll(p)) found.add(m[1]!);
  }
  return found;
}

/** One row of a reference table, cells trimmed; the name is the first cell without its backticks. */
interface Row {
  name: string;
  type: string;
  default: string;
  reload: string;
  meaning: string;
}

/** The rows of the table under a `## heading` of the page. */
export function tableRows(page: string, heading: string): Row[] {
  const start = page.indexOf(`\n## ${heading}\n`);
  if (start === -1) throw new Error(`no "## ${heading}" section`);
  const end = page.indexOf("\n## ", start + 4);
  return page
    .slice(start, end === -1 ? undefined : end)
    .split("\n")
    .filter((l) => /^\| `/.test(l))
    .map((l) => {
      const cells = l.slice(1, l.endsWith("|") ? -1 : undefined).split(" | ").map((c) => c.trim());
      const [name, type, dflt, reload, meaning] = cells;
      if (cells.length !== 5) throw new Error(`row with ${cells.length} cells, not 5: ${l}`);
      return { name: name!.replace(/^`|`$/g, ""), type: type!, default: dflt!, reload: reload!, meaning: meaning! };
    });
}

/** The names missing from the documented list and the ones it has in excess. */
function drift(expected: Iterable<string>, documented: Iterable<string>) {
  const want = new Set(expected);
  const have = new Set(documented);
  return { missingFromDoc: [...want].filter((k) => !have.has(k)).sort(), notInCode: [...have].filter((k) => !want.has(k)).sort() };
}

const KEYS = schemaKeys(fileSchema as unknown as Schema);
const YAML_ROWS = tableRows(PAGE, "YAML keys");
const ENV_ROWS = tableRows(PAGE, "Environment variables");

describe("docs/configuration.md, against the code", () => {
  it("lists every YAML key of the schema, and no other", () => {
    expect(KEYS.length).toBeGreaterThan(40);
    expect(drift(KEYS.map((k) => k.path), YAML_ROWS.map((r) => r.name))).toEqual({ missingFromDoc: [], notInCode: [] });
    expect(YAML_ROWS.map((r) => r.name).length).toBe(new Set(YAML_ROWS.map((r) => r.name)).size);
  });

  it("lists every environment variable src/ reads, and no other", () => {
    const read = variablesRead(sources(join(ROOT, "src")));
    expect(read).toContain("TOKEN_SERVICE_ADDR");
    expect(read).toContain("OTEL_TRACES_SAMPLER");
    expect(drift(read, ENV_ROWS.map((r) => r.name))).toEqual({ missingFromDoc: [], notInCode: [] });
  });

  it("gives each row a type, a default, a reload answer and a meaning", () => {
    for (const row of [...YAML_ROWS, ...ENV_ROWS]) {
      for (const cell of ["type", "default", "reload", "meaning"] as const) expect(row[cell], `${row.name}: ${cell}`).not.toBe("");
      expect(row.reload, `${row.name}: reload`).toMatch(/^(yes|no)\b/);
    }
    for (const row of ENV_ROWS) expect(row.reload, `${row.name}: environment variables are read once`).toBe("no");
  });

  it("states each key's type and default as the schema has them, and every value of an enum", () => {
    const rows = new Map(YAML_ROWS.map((r) => [r.name, r]));
    for (const key of KEYS) {
      const row = rows.get(key.path)!;
      if (["boolean", "integer", "number", "enum"].includes(key.type)) expect(row.type, `${key.path}: type`).toBe(key.type);
      if (key.default !== undefined) expect(row.default, `${key.path}: default`).toContain(`\`${String(key.default)}\``);
      for (const v of key.enumValues ?? []) expect(`${row.default} ${row.meaning}`, `${key.path}: value ${v}`).toContain(`\`${v}\``);
    }
  });

  describe("says what a reload applies, as src/reload/plan.ts decides it", () => {
    const dir = mkdtempSync(join(tmpdir(), "config-reference-"));
    afterAll(() => rmSync(dir, { recursive: true, force: true }));
    // One file name for all: the path is itself a setting (TOKEN_SERVICE_CONFIG).
    const load = (file: Record<string, unknown>) => {
      writeFileSync(join(dir, "config.yaml"), stringify(file));
      return loadConfig({ TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"), DATABASE_URL: `sqlite:${join(dir, "db")}` }, dir);
    };
    const base = load({});
    // Each key with a default, outside the lists and tls (which need more than one value to be valid), changed alone.
    const scalars = KEYS.filter((k) => k.default !== undefined && !k.path.includes("[]") && !k.path.startsWith("tls."));

    it.each(scalars.map((k) => [k.path, k]))("%s", (_path, key) => {
      const d = key.default;
      const changed = typeof d === "boolean" ? !d : typeof d === "number" ? d + 1 : key.enumValues!.find((v) => v !== d);
      const file: Record<string, unknown> = {};
      const parts = key.path.split(".");
      let at = file;
      for (const p of parts.slice(0, -1)) at = (at[p] = {}) as Record<string, unknown>;
      at[parts.at(-1)!] = changed;
      const plan = planReload(base, load(file));
      // Applied: the reload takes it, and nothing waits for a restart. (A key that is only checked at load,
      // such as insecure_plaintext, changes neither: it is not applied either.)
      const applied = plan.changed && plan.needsRestart.length === 0;
      const row = YAML_ROWS.find((r) => r.name === key.path)!;
      expect(row.reload.startsWith("yes") ? "yes" : "no", `${key.path}: ${row.reload}`).toBe(applied ? "yes" : "no");
    });

    it("the lists of providers and callers and the tls files: yes", () => {
      for (const row of YAML_ROWS.filter((r) => /^(providers|callers)\[\]\.|^tls\./.test(r.name))) expect(row.reload, row.name).toMatch(/^yes/);
    });
  });
});
