import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { stringify } from "yaml";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { connectGrpcClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";
import { createTestDatabase } from "../helpers/service.js";

const CLUSTER_LIMIT = 3;
const SESSIONS = 24;

/**
 * The per-provider bound on background refreshes holds for the cluster, not
 * per replica: three replicas, each allowed far more on its own, against a
 * provider that counts the refreshes it is answering at once (each takes
 * 300 ms), never exceed `cluster_max_inflight_per_provider` together, and
 * still refresh every session due, each once.
 */
describe("cluster-wide background refresh limit over three replicas", () => {
  let provider: TestProvider;
  let databaseUrl: string;
  let dir: string;
  const procs: ServiceProcess[] = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-limit-"));
    provider = await startTestProvider();
    databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      stringify({
        providers: [provider.configEntry()],
        refresh: {
          lease_seconds: 9,
          provider_timeout_seconds: 3,
          background: { interval_seconds: 0.2, max_inflight_per_provider: 10, cluster_max_inflight_per_provider: CLUSTER_LIMIT },
        },
        shutdown_grace_seconds: 2,
      }),
    );
    const env = { DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("limit"), TOKEN_SERVICE_CONFIG: configFile };
    procs.push(...(await Promise.all([spawnService(env), spawnService(env), spawnService(env)])));
  });

  afterAll(async () => {
    for (const p of procs) p.kill("SIGKILL");
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function versions(ids: string[]): Promise<number[]> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      return (await client.query<{ version: number }>("select version from sessions where id = any($1)", [ids])).rows.map((r) => Number(r.version));
    } finally {
      await client.end();
    }
  }

  it("never has more refreshes at the provider than the cluster limit, and refreshes every due session once", async () => {
    const clients = procs.map((p) => connectGrpcClient(p.url));
    const logins = await Promise.all(Array.from({ length: SESSIONS }, (_, i) => provider.login(`limit-${i}`)));
    provider.resetStats();
    for (let i = 0; i < SESSIONS * 2; i++) provider.faults.push({ kind: "delay", ms: 300 });
    // Stored through all three replicas, each already past its refresh time: all due at once.
    const ids: string[] = [];
    for (const [i, t] of logins.entries()) {
      const { sessionId } = await clients[i % 3]!.storeSession({
        userId: `limit-${i}`,
        provider: "corp",
        tokens: { accessToken: t.access_token, refreshToken: t.refresh_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
      });
      ids.push(sessionId);
    }
    const deadline = Date.now() + 60_000;
    while ((await versions(ids)).some((v) => v < 2)) {
      if (Date.now() > deadline) throw new Error("timed out waiting for every session to be refreshed");
      await sleep(100);
    }
    expect(provider.stats.maxConcurrentRefreshes).toBeLessThanOrEqual(CLUSTER_LIMIT);
    expect(provider.stats.maxConcurrentRefreshes).toBeGreaterThan(1);
    expect(provider.stats.refreshes).toBe(SESSIONS);
    expect(provider.stats.invalidGrants).toBe(0);
    expect(await versions(ids)).toEqual(ids.map(() => 2));
    provider.faults.length = 0;
  });
});
