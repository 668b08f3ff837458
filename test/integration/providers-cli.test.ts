import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startMcpAuthorizationServer } from "../helpers/id-jag.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService } from "../helpers/process.js";

/** `token-service providers add | list | remove`, and `keys rotate` moving a provider's secret, as a user runs them. */
describe("the providers command", () => {
  let provider: TestProvider;
  let dir: string;
  let env: Record<string, string>;

  beforeAll(async () => {
    provider = await startTestProvider();
    dir = mkdtempSync(join(tmpdir(), "token-service-providers-cli-"));
    writeFileSync(join(dir, "config.yaml"), stringify({ providers: [provider.configEntry()], outbound: { allow_hosts: [new URL(provider.issuer).host], allow_insecure_http: true } }));
    env = { DATABASE_URL: `sqlite:${join(dir, "s.db")}`, TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"), TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("old") };
  });
  afterAll(async () => {
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function cli(args: string[], extraEnv: Record<string, string> = {}) {
    const proc = await spawnService({ ...env, ...extraEnv }, { args, expectListening: false });
    const code = await proc.exited;
    return { code, stdout: proc.stdout(), stderr: proc.stderr() };
  }

  it("adds, lists, re-keys and removes a provider, never printing its secret", async () => {
    const add = await cli(
      ["providers", "add", "--id", "cli-idp", "--issuer", provider.issuer, "--client-id", provider.clientId, "--client-secret-env", "IDP_SECRET",
        "--redirect-uri", provider.redirectUri, "--allow-insecure-http"],
      { IDP_SECRET: provider.clientSecret },
    );
    expect(add.code, add.stderr).toBe(0);
    expect(add.stdout).toMatch(/^added cli-idp\truntime\/static\t/m);
    const list = await cli(["providers", "list"]);
    expect(list.code).toBe(0);
    expect(list.stdout).toMatch(/^corp\tyaml\t/m);
    expect(list.stdout).toMatch(/^cli-idp\truntime\/static\t.*client token-service \(client_secret_basic\)/m);

    // A new primary key: keys rotate moves the provider's secret to it; then the old key can go.
    const newKey = generateKeySpec("new");
    const rotate = await cli(["keys", "rotate"], { TOKEN_SERVICE_ENCRYPTION_KEYS: `${newKey},${env.TOKEN_SERVICE_ENCRYPTION_KEYS}` });
    expect(rotate.code, rotate.stdout + rotate.stderr).toBe(0);
    expect(rotate.stdout).toContain("providers: 1 re-encrypted");
    const onlyNew = await cli(["providers", "list"], { TOKEN_SERVICE_ENCRYPTION_KEYS: newKey });
    expect(onlyNew.stdout).toMatch(/^cli-idp\t/m);
    expect(onlyNew.stderr).not.toContain("cannot be loaded");

    const bad = await cli(["providers", "add", "--id", "half", "--client-id", "x"], { TOKEN_SERVICE_ENCRYPTION_KEYS: newKey });
    expect(bad.code).toBe(2);
    expect(bad.stderr).toMatch(/set exactly one of issuer and resource_url/);
    const remove = await cli(["providers", "remove", "--id", "cli-idp"], { TOKEN_SERVICE_ENCRYPTION_KEYS: newKey });
    expect(remove.code, remove.stderr).toBe(0);
    expect((await cli(["providers", "list"], { TOKEN_SERVICE_ENCRYPTION_KEYS: newKey })).stdout).not.toContain("cli-idp");
    for (const r of [add, list, rotate, onlyNew, bad, remove]) expect(r.stdout + r.stderr).not.toContain(provider.clientSecret);
  });

  it("adds an enterprise-managed provider (ID-JAG) whose IdP is the YAML provider, and refuses one without the IdP", async () => {
    const as = await startMcpAuthorizationServer(provider.issuer);
    try {
      const sub = mkdtempSync(join(dir, "em-"));
      writeFileSync(join(sub, "config.yaml"), stringify({ providers: [provider.configEntry()], outbound: { allow_private_networks: true, allow_insecure_http: true } }));
      const local = { DATABASE_URL: `sqlite:${join(sub, "s.db")}`, TOKEN_SERVICE_CONFIG: join(sub, "config.yaml"), AS_SECRET: as.clientSecret };
      const args = ["providers", "add", "--id", "crm", "--kind", "enterprise_managed", "--issuer", as.issuer, "--resource", "https://mcp.crm.example/mcp",
        "--client-id", as.clientId, "--client-secret-env", "AS_SECRET", "--allow-insecure-http"];
      const refused = await cli([...args, "--enterprise-idp", "nobody"], local);
      expect(refused.code).toBe(2);
      expect(refused.stderr).toMatch(/enterprise_idp: must name another configured provider/);
      const add = await cli([...args, "--enterprise-idp", "corp"], local);
      expect(add.code, add.stderr).toBe(0);
      expect(add.stdout).toMatch(/^added crm\truntime\/static\t.*resource https:\/\/mcp\.crm\.example\/mcp\tenterprise_managed via corp$/m);
      expect((await cli(["providers", "list"], local)).stdout).toMatch(/^crm\t.*enterprise_managed via corp$/m);
      expect(add.stdout + add.stderr + refused.stderr).not.toContain(as.clientSecret);
    } finally {
      await as.close();
    }
  });
});
