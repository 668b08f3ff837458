import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { CallScopedStorage, ormContextScoped } from "../../src/db/orm-context.js";
import { connectGrpcClient, connectJsonClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";
import { createTestDatabase } from "../helpers/service.js";

const probe = fileURLToPath(new URL("../helpers/async-hooks-probe.mjs", import.meta.url));

/** What the probe in `svc` says of its promise hooks, now. */
async function promiseHooks(svc: ServiceProcess): Promise<"on" | "off"> {
  const seen = svc.stderr().split("async-hooks-probe:").length;
  svc.kill("SIGUSR2");
  for (let i = 0; i < 200; i++) {
    const parts = svc.stderr().split("async-hooks-probe:");
    if (parts.length > seen) return /^ promise hooks (on|off)/.exec(parts[parts.length - 1]!)![1] as "on" | "off";
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
  throw new Error(`no answer from the probe; stderr: ${svc.stderr().slice(-2000)}`);
}

describe("Node's async hooks stay off (src/db/orm-context.ts)", () => {
  let provider: TestProvider;
  let dir: string;
  const procs: ServiceProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-hooks-"));
    provider = await startTestProvider({ accessTokenTtl: 3600 });
  });
  afterAll(async () => {
    for (const p of procs) p.kill("SIGKILL");
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function start(databaseUrl: string, env: Record<string, string> = {}): Promise<ServiceProcess> {
    const config = join(dir, `config-${procs.length}.yaml`);
    writeFileSync(config, stringify({ providers: [provider.configEntry()] }));
    const svc = await spawnService(
      { DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("k"), TOKEN_SERVICE_CONFIG: config, ...env },
      { nodeArgs: ["--import", probe] },
    );
    procs.push(svc);
    return svc;
  }

  /** Everything that goes through MikroORM's transactions and flushes: store, refresh, list, revoke (both listeners). */
  async function exercise(svc: ServiceProcess, user: string): Promise<void> {
    for (const client of [connectGrpcClient(svc.url), connectJsonClient(svc.httpUrl!)]) {
      const tokens = await provider.login(user);
      const { sessionId } = await client.storeSession({
        userId: user,
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 3600n },
      });
      expect((await client.getToken({ userId: user, sessionId })).token).toBe(tokens.access_token);
      const refreshed = await client.getToken({ userId: user, sessionId, forceRefresh: true });
      expect(refreshed.token).not.toBe(tokens.access_token);
      expect((await client.listSessions({ userId: user })).sessions.length).toBeGreaterThan(0);
      await client.revokeSession({ userId: user, sessionId });
    }
  }

  for (const dialect of ["sqlite", "postgresql"] as const) {
    it(`after transactions, flushes and a refresh on ${dialect}, no promise hook runs`, async () => {
      const url = dialect === "sqlite" ? `sqlite:${join(dir, "hooks.db")}` : await createTestDatabase(inject("postgresUrl"));
      const svc = await start(url);
      await exercise(svc, `hooks-${dialect}`);
      expect(await promiseHooks(svc)).toBe("off");
    });
  }

  it("the probe sees the hooks when an AsyncLocalStorage has run", async () => {
    const svc = await start(`sqlite:${join(dir, "control.db")}`, { ASYNC_HOOKS_PROBE_ON: "1" });
    await exercise(svc, "hooks-control");
    expect(await promiseHooks(svc)).toBe("on");
  });

  it("MikroORM in the tests has the same storage as in the service", async () => {
    expect(await ormContextScoped()).toBe(true);
  });

  it("CallScopedStorage holds a store for the synchronous part of run, nested, and through a throw", () => {
    const s = new CallScopedStorage<string>();
    expect(s.getStore()).toBeUndefined();
    const seen: Array<string | undefined> = [];
    const result = s.run("outer", (a: number) => {
      seen.push(s.getStore());
      s.run("inner", () => seen.push(s.getStore()));
      seen.push(s.getStore());
      expect(() => s.run("thrown", () => {
        throw new Error("boom");
      })).toThrow("boom");
      seen.push(s.getStore());
      s.exit(() => seen.push(s.getStore()));
      return a * 2;
    }, 21);
    expect(result).toBe(42);
    expect(seen).toEqual(["outer", "inner", "outer", "outer", undefined]);
    expect(s.getStore()).toBeUndefined();
    expect(() => s.enterWith("x")).toThrow(/not supported/);
  });
});
