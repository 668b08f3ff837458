import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService } from "../helpers/process.js";
import { createTestDatabase, startService, type Dialect, type StartOptions } from "../helpers/service.js";

let provider: TestProvider;
beforeAll(async () => {
  provider = await startTestProvider();
});
afterAll(async () => {
  await provider?.close();
});

describe.each<Dialect>(["sqlite", "postgresql"])("key rotation on %s", (dialect) => {
  let dir: string;
  let base: StartOptions;
  let cliEnv: (keys: string) => Record<string, string>;
  const k1 = generateKeySpec("k1");
  const k2 = generateKeySpec("k2");

  async function cli(keys: string, ...args: string[]) {
    const p = await spawnService(cliEnv(keys), { args, expectListening: false });
    return { code: await p.exited, out: p.stdout(), err: p.stderr() };
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-keys-"));
    const sqlitePath = join(dir, "sessions.db");
    const databaseUrl = dialect === "postgresql" ? await createTestDatabase(inject("postgresUrl")) : undefined;
    base = { dialect, provider, sqlitePath, databaseUrl, keys: k1 };
    const configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      stringify({ providers: [provider.configEntry()] }),
    );
    cliEnv = (keys) => ({
      DATABASE_URL: databaseUrl ?? `sqlite:${sqlitePath}`,
      TOKEN_SERVICE_ENCRYPTION_KEYS: keys,
      TOKEN_SERVICE_CONFIG: configFile,
    });
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("re-encrypts every session under the new key, so the old key can be dropped", async () => {
    const svc = await startService(base);
    const sessions: Array<{ user: string; sessionId: string; token: string }> = [];
    for (let i = 0; i < 5; i++) {
      const user = `rot-${i}`;
      const tokens = await provider.login(user);
      const { sessionId } = await svc.client.storeSession({
        userId: user,
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, idToken: tokens.id_token, expiresIn: 300n },
      });
      sessions.push({ user, sessionId, token: tokens.access_token });
    }
    await svc.close();

    const before = await cli(`${k2},${k1}`, "keys", "status");
    expect(before.code).toBe(0);
    expect(before.out).toMatch(/primary key: k2/);
    expect(before.out).toMatch(/k1\t5 sessions\tconfigured/);

    const rotated = await cli(`${k2},${k1}`, "keys", "rotate", "--batch", "2");
    expect(rotated.code).toBe(0);
    expect(rotated.out).toMatch(/done: 5 re-encrypted, 0 changed by a replica meanwhile/);
    expect(rotated.out).toMatch(/older keys can be removed/);
    // Resumable and idempotent: a second run finds nothing to do.
    expect((await cli(`${k2},${k1}`, "keys", "rotate")).out).toMatch(/done: 0 re-encrypted/);

    const after = await cli(k2, "keys", "status");
    expect(after.code).toBe(0);
    expect(after.out).toMatch(/k2\t5 sessions\tprimary/);
    expect(after.out).not.toMatch(/k1/);

    // Only the new key now: every session reads, and refreshes.
    const only2 = await startService({ ...base, keys: k2 });
    try {
      for (const s of sessions) {
        expect((await only2.client.getToken({ userId: s.user, sessionId: s.sessionId })).token).toBe(s.token);
      }
      const fresh = await only2.client.getToken({ userId: sessions[0]!.user, sessionId: sessions[0]!.sessionId, forceRefresh: true });
      expect(fresh.token).not.toBe(sessions[0]!.token);
      const listed = await only2.client.listSessions({ userId: sessions[1]!.user });
      expect(listed.sessions[0]!.keyId).toBe("k2");
    } finally {
      await only2.close();
    }
  });

  it("reports sessions whose key is missing and exits non-zero", async () => {
    const status = await cli(generateKeySpec("k9"), "keys", "status");
    expect(status.code).toBe(1);
    expect(status.out).toMatch(/k2\t\d+ sessions?\tMISSING/);
    for (const spec of [k1, k2]) expect(status.out + status.err).not.toContain(spec.split(":")[1]);
  });

  it("rotates while the service refreshes the same sessions, losing nothing", async () => {
    const k3 = generateKeySpec("k3");
    // Stored under k2, so the rotation to k3 has work to do while the refreshes rewrite the same row.
    const user = "busy";
    const tokens = await provider.login(user);
    const writer = await startService({ ...base, keys: k2 });
    const { sessionId } = await writer.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 300n },
    });
    await writer.close();
    const svc = await startService({ ...base, keys: `${k3},${k2}` });
    try {
      provider.resetStats();
      let running = true;
      const refresher = (async () => {
        while (running) await svc.client.getToken({ userId: user, sessionId, forceRefresh: true });
      })();
      const rotation = await cli(`${k3},${k2}`, "keys", "rotate", "--batch", "1");
      running = false;
      await refresher;
      expect(rotation.code === 0 || /changed by a replica meanwhile \(run again/.test(rotation.out)).toBe(true);
      if (rotation.code !== 0) expect((await cli(`${k3},${k2}`, "keys", "rotate")).code).toBe(0);
      expect(provider.stats.invalidGrants).toBe(0);
      expect((await cli(k3, "keys", "status")).out).not.toMatch(/k2/);
    } finally {
      await svc.close();
    }
  });
});
