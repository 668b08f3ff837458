import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { parseKeyRing } from "../../src/crypto/key-ring.js";
import { connectGrpcClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService } from "../helpers/process.js";
import { createTestDatabase } from "../helpers/service.js";

let provider: TestProvider;
let dir: string;
beforeAll(async () => {
  provider = await startTestProvider();
  dir = mkdtempSync(join(tmpdir(), "token-service-proc-"));
});
afterAll(async () => {
  await provider?.close();
  rmSync(dir, { recursive: true, force: true });
});

function writeConfig(extra: Record<string, unknown> = {}): string {
  const file = join(dir, `config-${Math.random().toString(36).slice(2)}.yaml`);
  writeFileSync(
    file,
    stringify({
      providers: [
        {
          id: "corp",
          issuer: provider.issuer,
          client_id: provider.clientId,
          client_secret: provider.clientSecret,
          allow_insecure_http: true,
        },
      ],
      ...extra,
    }),
  );
  return file;
}

describe("the service as a process", () => {
  it("starts on the embedded default with nothing configured", async () => {
    const cwd = mkdtempSync(join(dir, "fresh-"));
    const svc = await spawnService({}, { cwd });
    try {
      const started = svc.lines().find((l) => l.msg === "token service listening")!;
      expect(String(started.database)).toContain(join(cwd, "data/token-service.db"));
      expect(existsSync(join(cwd, "data/token-service.db.keys"))).toBe(true);
      svc.kill("SIGTERM");
      expect(await svc.exited).toBe(0);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("drains an in-flight call on SIGTERM, then exits 0", async () => {
    const svc = await spawnService({
      DATABASE_URL: `sqlite:${join(dir, "drain.db")}`,
      TOKEN_SERVICE_CONFIG: writeConfig(),
    });
    try {
      const client = connectGrpcClient(svc.url);
      const tokens = await provider.login("drain");
      const { sessionId } = await client.storeSession({
        userId: "drain",
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 1n },
      });
      await new Promise((r) => setTimeout(r, 1100));
      provider.faults.push({ kind: "delay", ms: 1500 });
      const inflight = client.getToken({ userId: "drain", sessionId });
      await svc.waitForLine((l) => l.msg === "provider discovery done");
      svc.kill("SIGTERM");
      await svc.waitForLine((l) => l.msg === "shutting down: draining calls");
      const got = await inflight;
      expect(got.token).not.toBe(tokens.access_token);
      expect(await svc.exited).toBe(0);
      // Shut down means shut: new calls are refused.
      await expect(client.getToken({ userId: "drain", sessionId })).rejects.toThrow();
      expect(svc.lines().some((l) => l.msg === "shut down")).toBe(true);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("refuses to start on PostgreSQL without keys (exit 2, clear message)", async () => {
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const svc = await spawnService({ DATABASE_URL: databaseUrl }, { expectListening: false });
    expect(await svc.exited).toBe(2);
    expect(svc.stderr()).toMatch(/TOKEN_SERVICE_ENCRYPTION_KEYS is required with PostgreSQL/);
    expect(svc.stderr()).not.toContain("postgres://");
  });

  it("refuses a bad config naming the field, without printing the secret", async () => {
    const file = join(dir, "bad.yaml");
    writeFileSync(
      file,
      stringify({ providers: [{ id: "corp", issuer: "http://idp.example.com", client_id: "c", client_secret: "s3cr3t-do-not-print" }] }),
    );
    const svc = await spawnService({ TOKEN_SERVICE_CONFIG: file }, { expectListening: false });
    expect(await svc.exited).toBe(2);
    expect(svc.stderr()).toContain("providers[0].issuer");
    expect(svc.stderr() + svc.stdout()).not.toContain("s3cr3t-do-not-print");
  });

  it("prints a usable key with `keys generate`", async () => {
    const svc = await spawnService({}, { args: ["keys", "generate", "--id", "prod-1"], expectListening: false });
    expect(await svc.exited).toBe(0);
    const ring = parseKeyRing(svc.stdout().trim());
    expect(ring.primary.id).toBe("prod-1");
  });

  it("applies and lists migrations with `migrate`", async () => {
    const env = { DATABASE_URL: `sqlite:${join(dir, "migrate.db")}` };
    const up = await spawnService(env, { args: ["migrate", "up"], expectListening: false });
    expect(await up.exited).toBe(0);
    expect(up.stdout()).toMatch(/applied +Migration\d+/);
    const status = await spawnService(env, { args: ["migrate", "status"], expectListening: false });
    expect(await status.exited).toBe(0);
    expect(status.stdout()).toMatch(/\d+ applied, 0 pending/);
  });
});
