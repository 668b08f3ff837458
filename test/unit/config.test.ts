import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, isLoopbackHost, loadConfig, parseConfigFile } from "../../src/config.js";

const dir = mkdtempSync(join(tmpdir(), "token-service-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

let n = 0;
/** Writes a YAML file in a fresh subdirectory and returns its path. */
function yamlFile(text: string): string {
  const sub = join(dir, `c${++n}`);
  mkdirSync(sub);
  const path = join(sub, "config.yaml");
  writeFileSync(path, text);
  return path;
}

function load(yaml: string, env: NodeJS.ProcessEnv = {}) {
  return loadConfig({ TOKEN_SERVICE_CONFIG: yamlFile(yaml), ...env }, dir);
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

const provider = (extra = "") => `
providers:
  - id: google
    issuer: https://accounts.example.com
    client_id: cid
    client_secret: s3cr3t-value
${extra}`;

describe("loadConfig: environment", () => {
  it("has safe defaults", () => {
    const cwd = join(dir, "work");
    const c = loadConfig({}, cwd);
    expect(c.host).toBe("127.0.0.1");
    expect(c.port).toBe(50051);
    expect(c.database).toEqual({ kind: "sqlite", path: resolve(cwd, "data/token-service.db") });
    expect(c.providers).toEqual([]);
    expect(c.configFile).toBeUndefined();
    expect(c.encryptionKeys).toBeUndefined();
    expect(c.logLevel).toBe("info");
    expect(c.refresh).toEqual({
      leaseMs: 30_000,
      providerTimeoutMs: 10_000,
      maxAttempts: 3,
      retryBaseDelayMs: 200,
      keepAliveMs: 86_400_000,
      absoluteLifetimeMs: 90 * 86_400_000,
      background: {
        enabled: true,
        intervalMs: 2000,
        recentWindowMs: 86_400_000,
        maxInflightPerProvider: 32,
        clusterMaxInflightPerProvider: 64,
        batchSize: 200,
      },
    });
    expect(c.sweeper).toEqual({
      enabled: true,
      intervalMs: 60_000,
      absoluteLifetimeMs: 90 * 86_400_000,
      reauthRetentionMs: 168 * 3_600_000,
      endedRetentionMs: 604_800_000,
      eventRetentionMs: 604_800_000,
      batchSize: 500,
    });
    expect(c.events).toEqual({ retentionMs: 604_800_000, pollMs: 5000, maxWatchers: 100, batchSize: 100 });
    expect(c.maxMessageBytes).toBe(256 * 1024);
    expect(c.shutdownGraceMs).toBe(10_000);
  });

  it.each([
    ["127.0.0.1:50051", "127.0.0.1", 50051],
    ["0.0.0.0:8080", "0.0.0.0", 8080],
    ["localhost:0", "localhost", 0],
    ["[::1]:50051", "::1", 50051],
    ["[::]:443", "::", 443],
    [":9000", "0.0.0.0", 9000],
    ["host.example:65535", "host.example", 65535],
  ])("parses TOKEN_SERVICE_ADDR=%s", (addr, host, port) => {
    // Network addresses need callers (and TLS, or the operator's explicit insecure_plaintext).
    const yaml = `callers:\n  - name: c\n    token_sha256: ${"a".repeat(64)}\n    rpcs: ["*"]\ninsecure_plaintext: true\n`;
    const c = loadConfig({ TOKEN_SERVICE_ADDR: addr, TOKEN_SERVICE_CONFIG: yamlFile(yaml) }, dir);
    expect(c.host).toBe(host);
    expect(c.port).toBe(port);
  });

  it.each(["", "localhost", "127.0.0.1", "::1:50051", "host:65536", "host:123456", "host:abc", "[::1]", "[::1:80", "host:-1"])(
    "rejects TOKEN_SERVICE_ADDR=%j",
    (addr) => {
      expect(configError(() => loadConfig({ TOKEN_SERVICE_ADDR: addr }, dir))).toMatch(/^TOKEN_SERVICE_ADDR: /);
    },
  );

  it("listens for Connect and gRPC-Web on 127.0.0.1:50052 by default, elsewhere with TOKEN_SERVICE_HTTP_ADDR, and not at all with off", () => {
    expect(loadConfig({}, dir).http).toEqual({ host: "127.0.0.1", port: 50052 });
    expect(loadConfig({ TOKEN_SERVICE_HTTP_ADDR: "[::1]:8080" }, dir).http).toEqual({ host: "::1", port: 8080 });
    expect(loadConfig({ TOKEN_SERVICE_HTTP_ADDR: "off" }, dir).http).toBeUndefined();
  });

  it.each(["", "50052", "host:99999", "on"])("rejects TOKEN_SERVICE_HTTP_ADDR=%j, naming the variable", (addr) => {
    expect(configError(() => loadConfig({ TOKEN_SERVICE_HTTP_ADDR: addr }, dir))).toMatch(/^TOKEN_SERVICE_HTTP_ADDR: /);
  });

  it.each([
    ["postgres://u:pw@db.example:5432/tokens", "postgres://u:pw@db.example:5432/tokens"],
    ["postgresql://db.example/tokens?sslmode=require", "postgresql://db.example/tokens?sslmode=require"],
  ])("accepts DATABASE_URL=%s", (url, expected) => {
    expect(loadConfig({ DATABASE_URL: url }, dir).database).toEqual({ kind: "postgresql", url: expected });
  });

  it.each([
    ["sqlite:relative/x.db", resolve("/srv/app", "relative/x.db")],
    ["sqlite:/abs/x.db", "/abs/x.db"],
    ["sqlite:///abs/x.db", "/abs/x.db"],
  ])("resolves DATABASE_URL=%s against cwd", (url, path) => {
    expect(loadConfig({ DATABASE_URL: url }, "/srv/app").database).toEqual({ kind: "sqlite", path });
  });

  it.each(["mysql://db/x", "sqlite:", "", "data/x.db", "postgres://[bad-host/x", "http://db"])(
    "rejects DATABASE_URL=%j, naming the field",
    (url) => {
      expect(configError(() => loadConfig({ DATABASE_URL: url }, dir))).toMatch(/^DATABASE_URL: /);
    },
  );

  it("never echoes a database password", () => {
    const msg = configError(() => loadConfig({ DATABASE_URL: "postgres://u:hunter2-pw@[bad/x" }, dir));
    expect(msg).not.toContain("hunter2-pw");
  });

  it("keeps encryption keys trimmed, and treats blank as absent", () => {
    expect(loadConfig({ TOKEN_SERVICE_ENCRYPTION_KEYS: "  k1:abc \n" }, dir).encryptionKeys).toBe("k1:abc");
    expect(loadConfig({ TOKEN_SERVICE_ENCRYPTION_KEYS: "   " }, dir).encryptionKeys).toBeUndefined();
  });

  it("takes TOKEN_SERVICE_LOG_LEVEL over the file, and rejects a bad level", () => {
    expect(load("log_level: warn\n").logLevel).toBe("warn");
    expect(load("log_level: warn\n", { TOKEN_SERVICE_LOG_LEVEL: "debug" }).logLevel).toBe("debug");
    expect(configError(() => loadConfig({ TOKEN_SERVICE_LOG_LEVEL: "verbose" }, dir))).toMatch(/^TOKEN_SERVICE_LOG_LEVEL: /);
    expect(configError(() => load("log_level: loud\n"))).toContain("log_level:");
  });

  it("names TOKEN_SERVICE_CONFIG when the file cannot be read", () => {
    const msg = configError(() => loadConfig({ TOKEN_SERVICE_CONFIG: "missing.yaml" }, dir));
    expect(msg).toMatch(/^TOKEN_SERVICE_CONFIG: cannot read .*missing\.yaml \(ENOENT\)/);
  });

  it("resolves a relative TOKEN_SERVICE_CONFIG against cwd", () => {
    const path = yamlFile("log_level: error\n");
    const c = loadConfig({ TOKEN_SERVICE_CONFIG: path.slice(dir.length + 1) }, dir);
    expect(c.configFile).toBe(path);
    expect(c.logLevel).toBe("error");
  });
});

describe("loadConfig: providers", () => {
  it("reads a provider with its defaults", () => {
    const [p, ...rest] = load(provider()).providers;
    expect(rest).toEqual([]);
    expect(p).toEqual({
      id: "google",
      issuer: "https://accounts.example.com",
      clientId: "cid",
      clientSecret: "s3cr3t-value",
      clientAuthMethod: "client_secret_basic",
      allowInsecureHttp: false,
      refreshMarginSeconds: 60,
      scopes: undefined,
      tokenEndpoint: undefined,
      revocationEndpoint: undefined,
      defaultTokenLifetimeSeconds: 300,
      source: "config",
      redirectUris: [],
      defaultResource: undefined,
      audienceTokens: "refresh",
      exchangeTarget: "resource",
    });
  });

  it("reads audience_tokens and exchange_target, and names a bad value", () => {
    const c = load(`${provider()}    audience_tokens: exchange\n    exchange_target: audience\n`);
    expect(c.providers[0]).toMatchObject({ audienceTokens: "exchange", exchangeTarget: "audience" });
    expect(() => load(`${provider()}    audience_tokens: passthrough\n`)).toThrow(/providers\[0\]\.audience_tokens: Invalid option: expected one of "refresh"\|"exchange"/);
  });

  it("reads a provider's redirect_uris and default_resource, and the authorization state lifetime", () => {
    const c = load(`${provider()}    redirect_uris: [https://app.example/cb]\n    default_resource: https://mcp.example/mcp\nauthorization:\n  state_ttl_seconds: 120\n`);
    expect(c.providers[0]).toMatchObject({ redirectUris: ["https://app.example/cb"], defaultResource: "https://mcp.example/mcp" });
    expect(c.authorization.stateTtlMs).toBe(120_000);
    expect(load(provider()).authorization.stateTtlMs).toBe(600_000);
  });

  it("reads client_secret_file relative to the config file, trimmed", () => {
    const path = yamlFile(`
providers:
  - id: p
    issuer: https://idp.example
    client_id: cid
    client_secret_file: secret.txt
`);
    writeFileSync(join(path, "..", "secret.txt"), "  file-secret\n\n");
    const c = loadConfig({ TOKEN_SERVICE_CONFIG: path }, "/nonexistent-cwd");
    expect(c.providers[0]?.clientSecret).toBe("file-secret");
  });

  it("rejects client_secret together with client_secret_file", () => {
    const msg = configError(() => load(provider("    client_secret_file: secret.txt")));
    expect(msg).toContain("providers[0]");
    expect(msg).toContain("not both");
    expect(msg).not.toContain("s3cr3t-value");
  });

  it("names client_secret_file when the file is missing or empty", () => {
    const yaml = `
providers:
  - id: p
    issuer: https://idp.example
    client_id: cid
    client_secret_file: nope.txt
`;
    expect(configError(() => load(yaml))).toMatch(/^providers\[0\]\.client_secret_file: cannot read nope\.txt \(ENOENT\)/);
    const path = yamlFile(yaml);
    writeFileSync(join(path, "..", "nope.txt"), " \n");
    expect(configError(() => loadConfig({ TOKEN_SERVICE_CONFIG: path }, dir))).toContain("providers[0].client_secret_file: the file is empty");
  });

  it("requires a secret unless client_auth_method is none", () => {
    const noSecret = "providers:\n  - { id: p, issuer: https://idp.example, client_id: cid }\n";
    expect(configError(() => load(noSecret))).toContain("providers[0]: client_secret or client_secret_file is required");
    const pub = load("providers:\n  - { id: p, issuer: https://idp.example, client_id: cid, client_auth_method: none, client_secret: ignored }\n");
    expect(pub.providers[0]?.clientAuthMethod).toBe("none");
    expect(pub.providers[0]?.clientSecret).toBeUndefined();
  });

  it.each(["issuer", "token_endpoint", "revocation_endpoint"])("rejects an http %s without allow_insecure_http", (field) => {
    const extra = field === "issuer" ? "" : `    ${field}: http://127.0.0.1:9000/x`;
    const yaml = field === "issuer" ? provider().replace("https://accounts.example.com", "http://127.0.0.1:9000") : provider(extra);
    const msg = configError(() => load(yaml));
    expect(msg).toContain(`providers[0].${field}: must use https`);
    expect(msg).not.toContain("s3cr3t-value");
  });

  it.each(["http://127.0.0.1:9000", "http://localhost:9000", "http://[::1]:9000", "http://127.1.2.3"])(
    "accepts allow_insecure_http for the loopback issuer %s",
    (issuer) => {
      const c = load(provider("    allow_insecure_http: true").replace("https://accounts.example.com", issuer));
      expect(c.providers[0]?.issuer).toBe(issuer);
      expect(c.providers[0]?.allowInsecureHttp).toBe(true);
    },
  );

  it.each(["http://idp.example", "http://10.0.0.1", "http://localhost.evil.example", "http://127.0.0.1.nip.io"])(
    "rejects allow_insecure_http for the non-loopback issuer %s",
    (issuer) => {
      const yaml = provider("    allow_insecure_http: true").replace("https://accounts.example.com", issuer);
      const msg = configError(() => load(yaml));
      expect(msg).toContain("providers[0].allow_insecure_http");
      expect(msg).not.toContain("s3cr3t-value");
    },
  );

  it("rejects a duplicate provider id, naming the second", () => {
    const yaml = `${provider()}  - { id: other, issuer: https://o.example, client_id: c, client_secret: x }
  - { id: google, issuer: https://g2.example, client_id: c, client_secret: y }
`;
    expect(configError(() => load(yaml))).toContain('providers[2].id: duplicate provider id "google"');
  });

  it("rejects unknown fields (strict) at every level", () => {
    expect(configError(() => load(provider("    client_secrt: typo")))).toMatch(/providers\[0\]: .*client_secrt/);
    expect(configError(() => load("bogus: 1\n"))).toMatch(/\(root\): .*bogus/);
    expect(configError(() => load("refresh:\n  lease: 5\n"))).toMatch(/refresh: .*lease/);
    expect(configError(() => load("limits:\n  max_bytes: 5\n"))).toMatch(/limits: .*max_bytes/);
  });

  it.each([
    ["id", provider().replace("id: google", 'id: "bad id!"'), "providers[0].id"],
    ["issuer", provider().replace("https://accounts.example.com", "not a url"), "providers[0].issuer"],
    ["issuer scheme", provider().replace("https://accounts.example.com", "ftp://idp.example"), "providers[0].issuer"],
    ["client_id", provider().replace("client_id: cid", 'client_id: ""'), "providers[0].client_id"],
    ["auth method", provider("    client_auth_method: private_key_jwt"), "providers[0].client_auth_method"],
    ["margin", provider("    refresh_margin_seconds: -1"), "providers[0].refresh_margin_seconds"],
    ["scopes", provider('    scopes: ["openid", "bad\\"scope"]'), "providers[0].scopes[1]"],
    ["lifetime", provider("    default_token_lifetime_seconds: 0"), "providers[0].default_token_lifetime_seconds"],
    ["max_attempts", "refresh:\n  max_attempts: 0\n", "refresh.max_attempts"],
    ["max_message_bytes", "limits:\n  max_message_bytes: 10\n", "limits.max_message_bytes"],
    ["providers type", "providers: {}\n", "providers"],
  ])("names the bad field (%s) and never the secret", (_label, yaml, field) => {
    const msg = configError(() => load(yaml));
    expect(msg).toContain(`${field}: `);
    expect(msg).not.toContain("s3cr3t-value");
  });

  it("does not leak a client_secret from invalid YAML", () => {
    const yaml = "providers:\n  - id: p\n    client_secret: s3cr3t-value\n   issuer: [unterminated\n";
    const msg = configError(() => load(yaml));
    expect(msg).toContain("not valid YAML");
    expect(msg).not.toContain("s3cr3t-value");
  });

  it("requires the lease to outlive the provider timeout by at least 1 s", () => {
    const refresh = (lease: number, timeout: number) =>
      `refresh:\n  lease_seconds: ${lease}\n  provider_timeout_seconds: ${timeout}\n`;
    expect(configError(() => load(refresh(10, 10)))).toMatch(/^refresh\.lease_seconds: /);
    expect(configError(() => load(refresh(10.5, 10)))).toMatch(/^refresh\.lease_seconds: /);
    expect(configError(() => load(refresh(5, 30)))).toMatch(/^refresh\.lease_seconds: /);
    expect(load(refresh(11, 10)).refresh).toMatchObject({ leaseMs: 11_000, providerTimeoutMs: 10_000 });
    expect(load(refresh(2, 0.5)).refresh).toMatchObject({ leaseMs: 2000, providerTimeoutMs: 500 });
  });
});

describe("parseConfigFile", () => {
  it("treats empty text and comments as all defaults", () => {
    for (const text of ["", "# nothing here\n", "~\n"]) {
      const f = parseConfigFile(text, "t.yaml");
      expect(f.providers).toEqual([]);
      expect(f.log_level).toBe("info");
      expect(f.refresh.lease_seconds).toBe(30);
    }
  });

  it("names the source and the field", () => {
    const msg = configError(() => parseConfigFile("shutdown_grace_seconds: -1\n", "/etc/ts.yaml"));
    expect(msg).toContain("invalid configuration in /etc/ts.yaml");
    expect(msg).toContain("shutdown_grace_seconds: ");
  });

  it("lists every bad field", () => {
    const msg = configError(() => parseConfigFile("log_level: nope\nshutdown_grace_seconds: 9999\n", "x"));
    expect(msg).toContain("log_level: ");
    expect(msg).toContain("shutdown_grace_seconds: ");
  });

  it.each(["a: [1, 2\n", "key: : value\n  - x\n", "\t- tab\n"])("rejects invalid YAML %j", (text) => {
    expect(configError(() => parseConfigFile(text, "bad.yaml"))).toMatch(/^invalid configuration in bad\.yaml: not valid YAML/);
  });

  it("rejects a YAML document that is not a mapping", () => {
    expect(configError(() => parseConfigFile("- a\n- b\n", "list.yaml"))).toContain("(root): ");
  });
});

describe("isLoopbackHost", () => {
  it.each([
    ["localhost", true],
    ["127.0.0.1", true],
    ["127.10.20.30", true],
    ["::1", true],
    ["[::1]", true],
    ["0.0.0.0", false],
    ["10.0.0.1", false],
    ["127.0.0.1.example", false],
    ["mylocalhost", false],
  ])("%s -> %s", (host, expected) => {
    expect(isLoopbackHost(host)).toBe(expected);
  });
});

describe("loadConfig: enterprise_managed providers", () => {
  const managed = (extra: string) =>
    `${provider()}  - id: crm\n    kind: enterprise_managed\n    issuer: https://auth.crm.example\n    client_id: c\n    client_secret: s\n${extra}`;

  it("reads the kind, the enterprise IdP and the resource", () => {
    const crm = load(managed("    enterprise_idp: google\n    default_resource: https://mcp.crm.example/mcp\n")).providers[1]!;
    expect(crm).toMatchObject({ id: "crm", kind: "enterprise_managed", enterpriseIdp: "google", defaultResource: "https://mcp.crm.example/mcp" });
    expect(load(provider()).providers[0]!.kind).toBeUndefined();
  });

  it("names what is missing or wrong", () => {
    expect(configError(() => load(managed("    default_resource: https://mcp.crm.example/mcp\n")))).toMatch(/providers\[1\]\.enterprise_idp: is required for kind enterprise_managed/);
    expect(configError(() => load(managed("    enterprise_idp: google\n")))).toMatch(/providers\[1\]\.default_resource: is required/);
    expect(configError(() => load(managed("    enterprise_idp: nobody\n    default_resource: https://mcp.crm.example/mcp\n")))).toMatch(
      /providers\[1\]\.enterprise_idp: must name another provider of this file/,
    );
    expect(configError(() => load(managed("    enterprise_idp: crm\n    default_resource: https://mcp.crm.example/mcp\n")))).toMatch(/not an enterprise_managed one/);
    expect(configError(() => load(provider("    enterprise_idp: google\n")))).toMatch(/providers\[0\]\.enterprise_idp: only for kind enterprise_managed/);
  });
});
