import { mkdtempSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { once } from "node:events";
import { createServer, type AddressInfo } from "node:net";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { connectGrpcClient, connectJsonClient } from "../helpers/clients.js";
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
        provider.configEntry(),
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
      const refreshesBefore = provider.stats.refreshes;
      provider.faults.push({ kind: "delay", ms: 1500 });
      // One call on each listener; they share the one refresh.
      const http = connectJsonClient(svc.httpUrl!);
      const inflight = client.getToken({ userId: "drain", sessionId });
      const inflightHttp = http.getToken({ userId: "drain", sessionId });
      // The refresh is at the provider (held there by the delay): both calls are in flight.
      await vi.waitFor(() => expect(provider.stats.refreshes).toBe(refreshesBefore + 1), { timeout: 10_000 });
      svc.kill("SIGTERM");
      await svc.waitForLine((l) => l.msg === "shutting down: draining calls");
      const got = await inflight;
      expect(got.token).not.toBe(tokens.access_token);
      expect((await inflightHttp).token).toBe(got.token);
      expect(await svc.exited).toBe(0);
      // Shut down means shut: new calls are refused, on both listeners.
      await expect(client.getToken({ userId: "drain", sessionId })).rejects.toThrow();
      await expect(http.getToken({ userId: "drain", sessionId })).rejects.toThrow();
      expect(svc.lines().some((l) => l.msg === "shut down")).toBe(true);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("cuts off calls still in flight when the grace period ends: UNAVAILABLE (SHUTTING_DOWN) on both listeners, exit 0", async () => {
    const svc = await spawnService({
      DATABASE_URL: `sqlite:${join(dir, "cutoff.db")}`,
      TOKEN_SERVICE_CONFIG: writeConfig({ shutdown_grace_seconds: 1 }),
    });
    try {
      const client = connectGrpcClient(svc.url);
      const tokens = await provider.login("cutoff");
      const { sessionId } = await client.storeSession({
        userId: "cutoff",
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 1n },
      });
      await new Promise((r) => setTimeout(r, 1100));
      const refreshesBefore = provider.stats.refreshes;
      provider.faults.push({ kind: "delay", ms: 4000 });
      const calls = [client, connectJsonClient(svc.httpUrl!)].map((c) =>
        c.getToken({ userId: "cutoff", sessionId }).then(
          () => "answered",
          (e: unknown) => e,
        ),
      );
      // The refresh is at the provider (held there by the delay): both calls are in flight.
      await vi.waitFor(() => expect(provider.stats.refreshes).toBe(refreshesBefore + 1), { timeout: 10_000 });
      const killed = Date.now();
      svc.kill("SIGTERM");
      for (const outcome of await Promise.all(calls)) {
        expect(outcome).toBeInstanceOf(ConnectError);
        expect((outcome as ConnectError).code).toBe(Code.Unavailable);
        expect((outcome as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason).toBe("SHUTTING_DOWN");
      }
      expect(await svc.exited).toBe(0);
      // Cut off after the 1 s grace; the refresh itself is waited for, bounded by its lease (not the 4 s delay here).
      expect(svc.lines().some((l) => l.msg === "shutdown grace period over: cutting off the calls still in flight")).toBe(true);
      expect(Date.now() - killed).toBeGreaterThanOrEqual(1000);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("on SIGTERM, finishes a refresh whose caller gave up, so the rotated refresh token is stored", async () => {
    const env = {
      DATABASE_URL: `sqlite:${join(dir, "orphan.db")}`,
      TOKEN_SERVICE_CONFIG: writeConfig(),
      TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("orphan"),
    };
    const svc = await spawnService(env);
    const client = connectGrpcClient(svc.url);
    const tokens = await provider.login("orphan");
    const { sessionId } = await client.storeSession({
      userId: "orphan",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 1n },
    });
    await new Promise((r) => setTimeout(r, 1100));
    provider.resetStats();
    provider.faults.push({ kind: "delay", ms: 1500 });
    // The caller gives up after 300 ms; the refresh at the provider goes on.
    await expect(client.getToken({ userId: "orphan", sessionId }, { timeoutMs: 300 })).rejects.toThrow();
    svc.kill("SIGTERM");
    expect(await svc.exited).toBe(0);
    expect(provider.stats.refreshes).toBe(1);
    // The new tokens were stored before the process exited: the next start serves them without a refresh.
    const again = await spawnService(env);
    try {
      const got = await connectGrpcClient(again.url).getToken({ userId: "orphan", sessionId });
      expect(got.token).not.toBe(tokens.access_token);
      expect(provider.stats.refreshes).toBe(1);
      expect(provider.stats.invalidGrants).toBe(0);
    } finally {
      again.kill("SIGKILL");
    }
  });

  it("exits, closing what it opened, when start-up fails part-way (admin port taken)", async () => {
    const blocker = createServer().listen(0, "127.0.0.1");
    await once(blocker, "listening");
    const port = (blocker.address() as AddressInfo).port;
    try {
      const svc = await spawnService(
        { DATABASE_URL: `sqlite:${join(dir, "half.db")}`, TOKEN_SERVICE_ADMIN_ADDR: `127.0.0.1:${port}` },
        { expectListening: false },
      );
      expect(await svc.exited).toBe(1);
      expect(svc.stderr()).toMatch(/serve failed: .*EADDRINUSE/);
    } finally {
      blocker.close();
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
