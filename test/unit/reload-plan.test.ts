import { execFileSync } from "node:child_process";
import { createHash, X509Certificate } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig, type Config } from "../../src/config.js";
import { planReload } from "../../src/reload/plan.js";

const dir = mkdtempSync(join(tmpdir(), "token-service-reload-plan-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

function selfSigned(name: string): { certFile: string; keyFile: string } {
  const [certFile, keyFile] = [join(dir, `${name}.crt`), join(dir, `${name}.key`)];
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", keyFile, "-out", certFile, "-days", "30", "-subj", `/CN=${name}`], { stdio: "ignore" });
  return { certFile, keyFile };
}
const [A, B, CA] = [selfSigned("a"), selfSigned("b"), selfSigned("ca")];

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const provider = (id: string, extra: Record<string, unknown> = {}) => ({ id, issuer: "https://idp.example.com", client_id: "c", client_secret: "s", ...extra });
const caller = (name: string, extra: Record<string, unknown> = {}) => ({ name, token_sha256: sha256(name), rpcs: ["*"], ...extra });

/** Loads a configuration as start-up does, from this YAML (and environment), always in the same file. */
function load(yaml: Record<string, unknown>, env: Record<string, string> = {}): Config {
  const file = join(dir, "config.yaml");
  writeFileSync(file, stringify(yaml));
  return loadConfig({ TOKEN_SERVICE_CONFIG: file, DATABASE_URL: `sqlite:${join(dir, "db")}`, ...env }, dir);
}

describe("planReload", () => {
  const base = { providers: [provider("corp"), provider("other")], callers: [caller("app"), caller("ops", { rate_limit: { per_second: 1, burst: 2 } })] };

  it("finds nothing to do in the same file", () => {
    const plan = planReload(load(base), load(base));
    expect(plan.changed).toBe(false);
    expect(plan.needsRestart).toEqual([]);
  });

  it("names the callers and providers added, removed and changed", () => {
    const next = load({
      providers: [provider("corp", { scopes: ["openid"] }), provider("third")],
      callers: [caller("app"), caller("ops", { rate_limit: { per_second: 5, burst: 2 } }), caller("new")],
      log_level: "debug",
    });
    const plan = planReload(load(base), next);
    expect(plan.changed).toBe(true);
    expect(plan.callers).toEqual({ added: ["new"], removed: [], changed: ["ops"] });
    expect(plan.providers).toEqual({ added: ["third"], removed: ["other"], changed: ["corp"] });
    expect(plan.logLevel).toEqual({ from: "info", to: "debug" });
    expect(plan.config.callers).toBe(next.callers);
    expect(plan.config.providers).toBe(next.providers);
  });

  it("keeps the running value of what needs a restart, and names it", () => {
    const current = load(base);
    const plan = planReload(current, load({ ...base, refresh: { lease_seconds: 40 }, reflection: false }, { TOKEN_SERVICE_ADDR: "127.0.0.1:6000" }));
    expect(plan.needsRestart).toEqual(["TOKEN_SERVICE_ADDR", "refresh", "reflection"]);
    expect(plan.config.port).toBe(current.port);
    expect(plan.config.refresh).toBe(current.refresh);
    expect(plan.config.reflection).toBe(true);
    expect(plan.changed).toBe(false);
  });

  it("does not turn caller authentication off: a file without callers keeps the running ones until a restart", () => {
    const current = load(base);
    const plan = planReload(current, load({ providers: base.providers }));
    expect(plan.needsRestart).toEqual(["callers (removing every caller turns caller authentication off)"]);
    expect(plan.config.callers).toBe(current.callers);
    expect(plan.callers).toEqual({ added: [], removed: [], changed: [] });
    // Turning it on, or removing some callers but not all, reloads.
    expect(planReload(load({ providers: base.providers }), current).config.callers).toBe(current.callers);
    expect(planReload(current, load({ ...base, callers: [caller("app")] })).callers.removed).toEqual(["ops"]);
  });

  it("rotates the certificate, but cannot turn TLS on or off or add a client CA", () => {
    const tlsA = { cert_file: A.certFile, key_file: A.keyFile };
    const withA = load({ ...base, tls: tlsA });
    const rotated = planReload(withA, load({ ...base, tls: { cert_file: B.certFile, key_file: B.keyFile } }));
    expect(rotated.changed).toBe(true);
    expect(rotated.tls?.certificate.sha256).toBe(new X509Certificate(readFileSync(B.certFile)).fingerprint256);
    expect(rotated.tls?.certificate.subject).toBe("CN=b");
    expect(rotated.needsRestart).toEqual([]);

    const off = planReload(withA, load(base));
    expect(off.needsRestart).toEqual(["tls (turning it on or off)"]);
    expect(off.config.tls).toBe(withA.tls);
    expect(off.tls).toBeUndefined();

    const on = planReload(load(base), load({ ...base, tls: tlsA }));
    expect(on.needsRestart).toEqual(["tls (turning it on or off)"]);
    expect(on.config.tls).toBeUndefined();

    const addCa = planReload(withA, load({ ...base, tls: { cert_file: B.certFile, key_file: B.keyFile, client_ca_file: CA.certFile } }));
    expect(addCa.needsRestart).toEqual(["tls.client_ca_file (adding or removing it)"]);
    expect(addCa.config.tls?.clientCa).toBeUndefined();
    expect(addCa.config.tls?.cert).toEqual(readFileSync(B.certFile));
  });
});

describe("user binding on a reload", () => {
  const assertion = (audience: string) => ({ issuer: "https://idp.example.com", jwks_uri: "https://idp.example.com/jwks", audience });

  it("applies user_binding and user_assertion, with nothing left for a restart", () => {
    const before = load({ providers: [provider("corp")], callers: [caller("gw")] });
    const after = load({ providers: [provider("corp")], callers: [caller("gw", { user_binding: "assertion" })], user_assertion: assertion("ts") });
    const plan = planReload(before, after);
    expect(plan).toMatchObject({ changed: true, needsRestart: [], userAssertion: true, callers: { changed: ["gw"] } });
    expect(plan.config.userAssertion).toEqual(after.userAssertion);
    expect(plan.config.callers[0]!.userBinding).toBe("assertion");
    const again = planReload(plan.config, load({ providers: [provider("corp")], callers: [caller("gw", { user_binding: "assertion" })], user_assertion: assertion("other") }));
    expect(again).toMatchObject({ changed: true, userAssertion: true, needsRestart: [] });
  });
});
