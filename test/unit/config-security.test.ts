import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig } from "../../src/config.js";

const dir = mkdtempSync(join(tmpdir(), "token-service-config-security-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/**
 * Writes a YAML file, plus any side files (certificates, keys), in a fresh
 * subdirectory and returns the YAML file's path. Relative paths in the YAML
 * resolve against that subdirectory.
 */
function yamlFile(text: string, files: Record<string, string | Buffer> = {}): string {
  const sub = join(dir, `c${++n}`);
  mkdirSync(sub);
  for (const [name, content] of Object.entries(files)) writeFileSync(join(sub, name), content);
  const path = join(sub, "config.yaml");
  writeFileSync(path, text);
  return path;
}

function load(yaml: string, env: NodeJS.ProcessEnv = {}, files: Record<string, string | Buffer> = {}) {
  return loadConfig({ TOKEN_SERVICE_CONFIG: yamlFile(yaml, files), ...env }, dir);
}

/** Expects a ConfigError and returns its message. */
function configError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).name).toBe("ConfigError");
    return (err as Error).message;
  }
  throw new Error("expected a ConfigError");
}

const sha256 = (s: string) => createHash("sha256").update(s, "utf8").digest("hex");
const DIGEST_A = sha256("caller-a-secret");
const DIGEST_B = sha256("caller-b-secret");

/** A self-signed certificate and its key, made by the openssl command line (the configuration checks they belong together). */
function selfSigned(name: string): { cert: string; key: string } {
  const [cert, key] = [join(dir, `${name}.crt`), join(dir, `${name}.key`)];
  execFileSync("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert, "-days", "30", "-subj", `/CN=${name}`], { stdio: "ignore" });
  return { cert: readFileSync(cert, "utf8"), key: readFileSync(key, "utf8") };
}
const SERVER = selfSigned("server");
const CLIENTS_CA = selfSigned("clients-ca");
const TLS_FILES = { "server.crt": SERVER.cert, "server.key": SERVER.key };
const TLS_FILES_WITH_CA = { ...TLS_FILES, "clients-ca.crt": CLIENTS_CA.cert };
const TLS_YAML = "tls:\n  cert_file: server.crt\n  key_file: server.key\n";
const TLS_YAML_WITH_CA = `${TLS_YAML}  client_ca_file: clients-ca.crt\n`;

const PROVIDERS = `
providers:
  - id: corp
    issuer: https://idp.corp.example
    client_id: cid
    client_secret: corp-client-secret
  - id: google
    issuer: https://accounts.example.com
    client_id: cid
    client_secret: google-client-secret
`;

/** One bearer caller with all rights. */
const ONE_CALLER = `callers:\n  - name: ops\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n`;

const NETWORK = { TOKEN_SERVICE_ADDR: "0.0.0.0:50051" };

describe("loadConfig: exposure rules", () => {
  it("refuses a network address without callers, naming callers", () => {
    const msg = configError(() => load("", NETWORK));
    expect(msg).toMatch(/^TOKEN_SERVICE_ADDR: /);
    expect(msg).toContain("needs callers");
  });

  it.each(["0.0.0.0:50051", ":50051", "[::]:50051", "10.1.2.3:50051", "token-service.internal:443"])(
    "refuses %s without callers",
    (addr) => {
      expect(configError(() => load("", { TOKEN_SERVICE_ADDR: addr }))).toContain("callers");
    },
  );

  it("refuses a network address without callers even with insecure_plaintext", () => {
    expect(configError(() => load("insecure_plaintext: true\n", NETWORK))).toContain("needs callers");
  });

  it("refuses a network address with callers but no tls, naming tls and insecure_plaintext", () => {
    const msg = configError(() => load(ONE_CALLER, NETWORK));
    expect(msg).toMatch(/^TOKEN_SERVICE_ADDR: /);
    expect(msg).toContain("needs tls");
    expect(msg).toContain("insecure_plaintext: true");
  });

  it("accepts a network address with callers and insecure_plaintext: true", () => {
    const c = load(`${ONE_CALLER}insecure_plaintext: true\n`, NETWORK);
    expect(c.host).toBe("0.0.0.0");
    expect(c.tls).toBeUndefined();
    expect(c.callers.map((x) => x.name)).toEqual(["ops"]);
  });

  it("accepts a network address with callers and tls", () => {
    const c = load(`${ONE_CALLER}${TLS_YAML}`, NETWORK, TLS_FILES);
    expect(c.host).toBe("0.0.0.0");
    expect(c.tls).toBeDefined();
    expect(c.callers).toHaveLength(1);
  });

  it.each([
    ["127.0.0.1:50051", "127.0.0.1"],
    ["localhost:50051", "localhost"],
    ["[::1]:50051", "::1"],
    ["127.10.20.30:50051", "127.10.20.30"],
  ])("accepts loopback %s with no callers and no tls", (addr, host) => {
    const c = load("", { TOKEN_SERVICE_ADDR: addr });
    expect(c.host).toBe(host);
    expect(c.callers).toEqual([]);
    expect(c.tls).toBeUndefined();
  });

  it("applies the same rules to the HTTP listener's address, naming TOKEN_SERVICE_HTTP_ADDR", () => {
    const httpNetwork = { TOKEN_SERVICE_HTTP_ADDR: "0.0.0.0:8080" };
    expect(configError(() => load("", httpNetwork))).toMatch(/^TOKEN_SERVICE_HTTP_ADDR: .*needs callers/);
    const msg = configError(() => load(ONE_CALLER, httpNetwork));
    expect(msg).toMatch(/^TOKEN_SERVICE_HTTP_ADDR: /);
    expect(msg).toContain("needs tls");
    expect(load(`${ONE_CALLER}insecure_plaintext: true\n`, httpNetwork).http).toEqual({ host: "0.0.0.0", port: 8080 });
    expect(load(`${ONE_CALLER}${TLS_YAML}`, { ...NETWORK, ...httpNetwork }, TLS_FILES).http).toEqual({ host: "0.0.0.0", port: 8080 });
    // A loopback gRPC address does not excuse a network HTTP address, nor the other way round.
    expect(configError(() => load("", { TOKEN_SERVICE_ADDR: "127.0.0.1:50051", ...httpNetwork }))).toMatch(/^TOKEN_SERVICE_HTTP_ADDR: /);
    expect(configError(() => load("", { ...NETWORK, TOKEN_SERVICE_HTTP_ADDR: "off" }))).toMatch(/^TOKEN_SERVICE_ADDR: /);
  });

  it("accepts the default address with no callers", () => {
    const c = loadConfig({}, dir);
    expect(c.host).toBe("127.0.0.1");
    expect(c.callers).toEqual([]);
  });
});

describe("loadConfig: callers", () => {
  it.each([
    ["uppercase", DIGEST_A.toUpperCase()],
    ["63 digits", DIGEST_A.slice(0, 63)],
    ["65 digits", `${DIGEST_A}0`],
    ["a non-hex digit", `${DIGEST_A.slice(0, 63)}g`],
    ["base64", Buffer.from(DIGEST_A, "hex").toString("base64")],
  ])("refuses a token_sha256 in %s", (_label, digest) => {
    const msg = configError(() => load(`callers:\n  - name: c\n    token_sha256: "${digest}"\n    rpcs: ["*"]\n`));
    expect(msg).toContain("callers[0].token_sha256: must be the SHA-256 of the credential as 64 lowercase hex digits");
  });

  it("refuses a caller with neither token_sha256 nor mtls_subject", () => {
    const msg = configError(() => load(`callers:\n  - name: c\n    rpcs: ["*"]\n`));
    expect(msg).toMatch(/^callers\[0\]: needs token_sha256 .* or mtls_subject/);
  });

  it("refuses duplicate caller names, naming the second one", () => {
    const yaml = `callers:
  - name: gw
    token_sha256: ${DIGEST_A}
    rpcs: [GetToken]
  - name: gw
    token_sha256: ${DIGEST_B}
    rpcs: [StoreSession]
`;
    expect(configError(() => load(yaml))).toBe('callers[1].name: duplicate caller name "gw"');
  });

  it("refuses the same token_sha256 on two callers", () => {
    const yaml = `callers:
  - name: a
    token_sha256: ${DIGEST_A}
    rpcs: [GetToken]
  - name: b
    token_sha256: ${DIGEST_A}
    rpcs: [StoreSession]
`;
    expect(configError(() => load(yaml))).toBe("callers[1].token_sha256: the same credential is given to two callers");
  });

  it("refuses mtls_subject without tls", () => {
    const msg = configError(() => load(`callers:\n  - name: m\n    mtls_subject: chat.internal\n    rpcs: [GetToken]\n`));
    expect(msg).toMatch(/^callers\[0\]\.mtls_subject: needs tls\.client_ca_file/);
  });

  it("refuses mtls_subject with tls but no tls.client_ca_file", () => {
    const msg = configError(() =>
      load(`callers:\n  - name: m\n    mtls_subject: chat.internal\n    rpcs: [GetToken]\n${TLS_YAML}`, {}, TLS_FILES),
    );
    expect(msg).toMatch(/^callers\[0\]\.mtls_subject: needs tls\.client_ca_file/);
  });

  it("accepts mtls_subject with tls.client_ca_file, and a caller with both credentials", () => {
    const yaml = `callers:
  - name: m
    mtls_subject: chat.internal
    rpcs: [GetToken]
  - name: both
    mtls_subject: ops.internal
    token_sha256: ${DIGEST_B}
    rpcs: ["*"]
${TLS_YAML_WITH_CA}`;
    const c = load(yaml, NETWORK, TLS_FILES_WITH_CA);
    expect(c.callers[0]).toMatchObject({ name: "m", mtlsSubject: "chat.internal", tokenSha256: undefined });
    expect(c.callers[1]?.mtlsSubject).toBe("ops.internal");
    expect(c.callers[1]?.tokenSha256?.toString("hex")).toBe(DIGEST_B);
  });

  // Two callers with the same mtls_subject could not be told apart (the directory would keep the
  // last one, handing its rights to the other's certificate): refused, case-insensitively.
  it("refuses the same mtls_subject on two callers (case-insensitively)", () => {
    const yaml = `callers:
  - name: reader
    mtls_subject: chat.internal
    rpcs: [GetToken]
  - name: admin
    mtls_subject: Chat.Internal
    rpcs: ["*"]
${TLS_YAML_WITH_CA}`;
    expect(configError(() => load(yaml, {}, TLS_FILES_WITH_CA))).toMatch(/^callers\[1\]\.mtls_subject: /);
  });

  it("refuses a provider that is not configured, naming callers[i].providers[j]", () => {
    const yaml = `${PROVIDERS}callers:
  - name: ok
    token_sha256: ${DIGEST_A}
    rpcs: [GetToken]
    providers: [corp]
  - name: bad
    token_sha256: ${DIGEST_B}
    rpcs: [GetToken]
    providers: [google, nope]
`;
    expect(configError(() => load(yaml))).toBe('callers[1].providers[1]: "nope" is not a configured provider');
  });

  it("refuses any provider scope when no providers are configured", () => {
    const yaml = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    providers: [corp]\n`;
    expect(configError(() => load(yaml))).toMatch(/^callers\[0\]\.providers\[0\]: "corp" is not a configured provider/);
  });

  it("refuses an empty providers list", () => {
    const yaml = `${PROVIDERS}callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    providers: []\n`;
    expect(configError(() => load(yaml))).toContain("callers[0].providers:");
  });

  it("reads a caller's resources, and refuses a relative or fragment URI naming its index", () => {
    const ok = load(`callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: [GetToken]\n    resources: ["https://mcp.example/mcp"]\n`);
    expect(ok.callers[0]!.resources).toEqual(new Set(["https://mcp.example/mcp"]));
    for (const bad of ["/mcp", "https://mcp.example/mcp#x"]) {
      const yaml = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: [GetToken]\n    resources: ["https://ok.example/", "${bad}"]\n`;
      expect(configError(() => load(yaml))).toContain("callers[0].resources[1]: must be an absolute URI without a fragment");
    }
    const empty = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: [GetToken]\n    resources: []\n`;
    expect(configError(() => load(empty))).toContain("callers[0].resources:");
  });

  it("refuses a caller without rpcs", () => {
    const msg = configError(() => load(`callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n`));
    expect(msg).toContain("callers[0].rpcs:");
  });

  it("refuses an empty rpcs list", () => {
    const msg = configError(() => load(`callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: []\n`));
    expect(msg).toContain("callers[0].rpcs: must list at least one RPC, or '*'");
  });

  it.each(["GetTokens", "gettoken", "tokenservice.v1.TokenService/GetToken", "all", ""])(
    "refuses the unknown rpc name %j, naming its index",
    (rpc) => {
      const yaml = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: [GetToken, "${rpc}"]\n`;
      expect(configError(() => load(yaml))).toContain("callers[0].rpcs[1]:");
    },
  );

  it.each(["StoreSession", "GetToken", "RevokeSession", "ListSessions", "RevokeUserSessions"])("accepts rpc %s", (rpc) => {
    const c = load(`callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: [${rpc}]\n`);
    expect([...(c.callers[0]?.rpcs ?? [])]).toEqual([rpc]);
  });

  it.each([
    ["a zero per_second", "{ per_second: 0, burst: 1 }", "callers[0].rate_limit.per_second:"],
    ["a negative per_second", "{ per_second: -5, burst: 1 }", "callers[0].rate_limit.per_second:"],
    ["a per_second over 1,000,000", "{ per_second: 1000001, burst: 1 }", "callers[0].rate_limit.per_second:"],
    ["a zero burst", "{ per_second: 1, burst: 0 }", "callers[0].rate_limit.burst:"],
    ["a fractional burst", "{ per_second: 1, burst: 1.5 }", "callers[0].rate_limit.burst:"],
    ["a missing burst", "{ per_second: 1 }", "callers[0].rate_limit.burst:"],
    ["a missing per_second", "{ burst: 3 }", "callers[0].rate_limit.per_second:"],
    ["a string per_second", '{ per_second: "10", burst: 3 }', "callers[0].rate_limit.per_second:"],
    ["an unknown key", "{ per_second: 1, burst: 1, per_minute: 60 }", "callers[0].rate_limit:"],
    ["a number instead of an object", "100", "callers[0].rate_limit:"],
  ])("refuses a rate_limit with %s", (_label, rateLimit, field) => {
    const yaml = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    rate_limit: ${rateLimit}\n`;
    expect(configError(() => load(yaml))).toContain(field);
  });

  it.each(["-gw", "a b", "x".repeat(65), "gw/1", ""])("refuses the caller name %j", (name) => {
    const yaml = `callers:\n  - name: "${name}"\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n`;
    expect(configError(() => load(yaml))).toContain("callers[0].name:");
  });

  it("refuses an unknown caller key (a typo must not silently drop a setting)", () => {
    const yaml = `callers:\n  - name: c\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    ratelimit: { per_second: 1, burst: 1 }\n`;
    const msg = configError(() => load(yaml));
    expect(msg).toContain("callers[0]");
    expect(msg).toContain("ratelimit");
  });
});

describe("loadConfig: tls", () => {
  it("names tls.cert_file when the certificate cannot be read", () => {
    const msg = configError(() => load(TLS_YAML, {}, { "server.key": "k" }));
    expect(msg).toMatch(/^tls\.cert_file: cannot read server\.crt \(ENOENT\)/);
  });

  it("names tls.key_file when the key cannot be read", () => {
    const msg = configError(() => load(TLS_YAML, {}, { "server.crt": "c" }));
    expect(msg).toMatch(/^tls\.key_file: cannot read server\.key \(ENOENT\)/);
  });

  it("names tls.client_ca_file when the client CA cannot be read", () => {
    const msg = configError(() => load(TLS_YAML_WITH_CA, {}, TLS_FILES));
    expect(msg).toMatch(/^tls\.client_ca_file: cannot read clients-ca\.crt \(ENOENT\)/);
  });

  it("refuses a tls section without key_file, or with an unknown key", () => {
    expect(configError(() => load("tls:\n  cert_file: server.crt\n", {}, TLS_FILES))).toContain("tls.key_file:");
    expect(configError(() => load(`${TLS_YAML}  ca_file: x\n`, {}, TLS_FILES))).toContain("tls");
  });

  it("reads the files, relative to the config file's directory", () => {
    const c = load(TLS_YAML_WITH_CA, {}, TLS_FILES_WITH_CA);
    expect(c.tls?.cert).toEqual(Buffer.from(TLS_FILES["server.crt"]));
    expect(c.tls?.key).toEqual(Buffer.from(TLS_FILES["server.key"]));
    expect(c.tls?.clientCa).toEqual(Buffer.from(TLS_FILES_WITH_CA["clients-ca.crt"]));
  });

  it("leaves clientCa undefined without client_ca_file, and tls undefined without a tls section", () => {
    expect(load(TLS_YAML, {}, TLS_FILES).tls?.clientCa).toBeUndefined();
    expect(load("").tls).toBeUndefined();
  });

  it("reads absolute paths as given", () => {
    const abs = join(dir, `abs-${++n}`);
    mkdirSync(abs);
    writeFileSync(join(abs, "a.crt"), SERVER.cert);
    writeFileSync(join(abs, "a.key"), SERVER.key);
    const c = load(`tls:\n  cert_file: ${join(abs, "a.crt")}\n  key_file: ${join(abs, "a.key")}\n`);
    expect(c.tls?.cert.toString()).toBe(SERVER.cert);
    expect(c.tls?.key.toString()).toBe(SERVER.key);
  });

  it("refuses material a listener could not use, naming the field and never showing the key", () => {
    const bad = (files: Record<string, string>, yaml = TLS_YAML) => configError(() => load(yaml, {}, { ...TLS_FILES, ...files }));
    expect(bad({ "server.crt": "not a certificate\n" })).toBe("tls.cert_file: not a PEM certificate");
    expect(bad({ "server.key": "not a key\n" })).toBe("tls.key_file: not an unencrypted PEM private key");
    expect(bad({ "server.key": CLIENTS_CA.key })).toBe("tls.key_file: the key does not match the certificate in tls.cert_file");
    expect(bad({ "clients-ca.crt": "not a CA\n" }, TLS_YAML_WITH_CA)).toBe("tls.client_ca_file: not a PEM certificate");
  });
});

describe("loadConfig: converted caller values", () => {
  const yaml = `${PROVIDERS}callers:
  - name: all
    token_sha256: ${DIGEST_A}
    rpcs: ["*"]
  - name: reader
    token_sha256: ${DIGEST_B}
    rpcs: [GetToken, ListSessions, GetToken]
    providers: [corp, google]
    rate_limit: { per_second: 2.5, burst: 10 }
  - name: mixed
    token_sha256: ${sha256("mixed")}
    rpcs: [GetToken, "*"]
`;

  it("maps rpcs, providers, tokenSha256 and rateLimit", () => {
    const [all, reader, mixed, ...rest] = load(yaml).callers;
    expect(rest).toEqual([]);

    expect(all?.name).toBe("all");
    expect(all?.rpcs).toBeUndefined();
    expect(all?.providers).toBeUndefined();
    expect(all?.rateLimit).toBeUndefined();
    expect(all?.mtlsSubject).toBeUndefined();
    expect(Buffer.isBuffer(all?.tokenSha256)).toBe(true);
    expect(all?.tokenSha256).toHaveLength(32);
    expect(all?.tokenSha256?.equals(createHash("sha256").update("caller-a-secret").digest())).toBe(true);

    expect(reader?.rpcs).toBeInstanceOf(Set);
    expect([...(reader?.rpcs ?? [])].sort()).toEqual(["GetToken", "ListSessions"]);
    expect(reader?.rpcs?.has("StoreSession")).toBe(false);
    expect(reader?.providers).toBeInstanceOf(Set);
    expect([...(reader?.providers ?? [])].sort()).toEqual(["corp", "google"]);
    expect(reader?.rateLimit).toEqual({ perSecond: 2.5, burst: 10 });
    expect(reader?.tokenSha256?.toString("hex")).toBe(DIGEST_B);

    // "*" anywhere in the list means every RPC.
    expect(mixed?.rpcs).toBeUndefined();
  });

  it("keeps callers in file order", () => {
    expect(load(yaml).callers.map((c) => c.name)).toEqual(["all", "reader", "mixed"]);
  });
});

describe("loadConfig: caller errors never echo a credential digest", () => {
  const cases: Array<[string, string, Record<string, string>?, NodeJS.ProcessEnv?]> = [
    [
      "a duplicate name",
      `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n  - name: x\n    token_sha256: ${DIGEST_B}\n    rpcs: ["*"]\n`,
    ],
    [
      "a duplicate digest",
      `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n  - name: y\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n`,
    ],
    ["an unknown rpc", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: [Nope]\n`],
    ["an unknown provider", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    providers: [nope]\n`],
    [
      "a bad rate limit",
      `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    rate_limit: { per_second: 0, burst: 0 }\n`,
    ],
    [
      "mtls without a client CA",
      `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    mtls_subject: x.internal\n    rpcs: ["*"]\n`,
    ],
    ["a missing tls file", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n${TLS_YAML}`],
    ["the exposure rule", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n`, {}, NETWORK],
    ["an unknown caller key", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}\n    rpcs: ["*"]\n    extra: 1\n`],
    ["broken YAML on the digest's line", `callers:\n  - name: x\n    token_sha256: ${DIGEST_A}: [\n    rpcs: ["*"]\n`],
  ];

  it.each(cases)("when the failure is %s", (_label, yaml, files = {}, env = {}) => {
    const msg = configError(() => load(yaml, env, files));
    expect(msg).not.toContain(DIGEST_A);
    expect(msg).not.toContain(DIGEST_B);
    expect(msg).not.toContain(DIGEST_A.slice(0, 16));
  });

  it("when the digest itself is malformed", () => {
    const bad = DIGEST_A.toUpperCase();
    const msg = configError(() => load(`callers:\n  - name: x\n    token_sha256: ${bad}\n    rpcs: ["*"]\n`));
    expect(msg).toContain("callers[0].token_sha256:");
    expect(msg.toLowerCase()).not.toContain(DIGEST_A);
  });
});

describe("user binding", () => {
  const token = createHash("sha256").update("gw").digest("hex");
  const caller = (binding: string) => `callers:\n  - { name: gw, token_sha256: ${token}, rpcs: ["*"], user_binding: ${binding} }\n`;
  const jwks = JSON.stringify({ keys: [{ kty: "EC", crv: "P-256", x: "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU", y: "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0", kid: "k1" }] });

  it("defaults to none, and reads session_id and assertion with a user_assertion (claim default sub)", () => {
    expect(load(caller("none").replace(", user_binding: none", "")).callers[0]!.userBinding).toBe("none");
    expect(load(caller("session_id")).callers[0]!.userBinding).toBe("session_id");
    const config = load(`${caller("assertion")}user_assertion: { issuer: https://idp.example.com, jwks_file: jwks.json, audience: token-service }\n`, {}, { "jwks.json": jwks });
    expect(config.callers[0]!.userBinding).toBe("assertion");
    expect(config.userAssertion).toMatchObject({ issuer: "https://idp.example.com", audience: "token-service", claim: "sub", jwksUri: undefined });
    expect(config.userAssertion!.jwks!.keys[0]!.kid).toBe("k1");
    expect(config.files.some((f) => f.endsWith("jwks.json"))).toBe(true);
  });

  it("names the field of a bad configuration", () => {
    expect(configError(() => load(caller("assertion")))).toMatch(/^callers\[0\]\.user_binding: "assertion" needs user_assertion/);
    expect(configError(() => load(caller("everyone")))).toMatch(/callers\[0\]\.user_binding|callers\.0\.user_binding/);
    const both = `${caller("assertion")}user_assertion: { issuer: i, jwks_uri: "https://idp.example.com/jwks", jwks_file: jwks.json, audience: a }\n`;
    expect(configError(() => load(both, {}, { "jwks.json": jwks }))).toMatch(/^user_assertion: needs exactly one of jwks_uri and jwks_file/);
    const neither = `${caller("assertion")}user_assertion: { issuer: i, audience: a }\n`;
    expect(configError(() => load(neither))).toMatch(/^user_assertion: needs exactly one/);
    const notJwks = `${caller("assertion")}user_assertion: { issuer: i, jwks_file: jwks.json, audience: a }\n`;
    expect(configError(() => load(notJwks, {}, { "jwks.json": "{not json" }))).toMatch(/^user_assertion\.jwks_file: not a JWK set/);
    expect(configError(() => load(notJwks))).toMatch(/^user_assertion\.jwks_file: cannot read/);
    const badUri = `${caller("assertion")}user_assertion: { issuer: i, jwks_uri: "ftp://x/jwks", audience: a }\n`;
    expect(configError(() => load(badUri))).toMatch(/user_assertion\.jwks_uri/);
  });
});
