import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import pg from "pg";
import { stringify } from "yaml";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Health, HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { connectGrpcClient, grpcJsClient, type ConnectTokenClient, type GrpcJsTokenClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startPostgres, type TestPostgres } from "../helpers/postgres.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";
import { createTestDatabase } from "../helpers/service.js";

interface Replica {
  proc: ServiceProcess;
  client: ConnectTokenClient;
  grpcJs: GrpcJsTokenClient;
}

async function until(check: () => boolean | Promise<boolean>, timeoutMs: number, what: string): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!(await check())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

/**
 * Three service processes on one PostgreSQL (a cluster of this file's own, so
 * it can be stopped), against an oidc-provider with refresh-token rotation.
 */
describe("three replicas on one PostgreSQL", () => {
  let postgres: TestPostgres;
  let databaseUrl: string;
  let provider: TestProvider;
  let env: Record<string, string>;
  let dir: string;
  const replicas: Replica[] = [];

  async function startReplica(): Promise<Replica> {
    const proc = await spawnService(env);
    return { proc, client: connectGrpcClient(proc.url), grpcJs: grpcJsClient(proc.url) };
  }

  async function query(sql: string, params: unknown[] = []): Promise<Array<Record<string, unknown>>> {
    const client = new pg.Client({ connectionString: databaseUrl });
    await client.connect();
    try {
      return (await client.query(sql, params)).rows;
    } finally {
      await client.end();
    }
  }

  async function storeExpired(user: string, via = 0): Promise<{ sessionId: string; accessToken: string }> {
    const tokens = await provider.login(user);
    const { sessionId } = await replicas[via]!.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: {
        accessToken: tokens.access_token,
        refreshToken: tokens.refresh_token,
        idToken: tokens.id_token,
        expiresAt: timestampFromDate(new Date(Date.now() - 1000)),
      },
    });
    return { sessionId, accessToken: tokens.access_token };
  }

  /*
   * Background refresh runs on every replica (interval 1 s) and may pick up an
   * expired session before the callers do: either way it must cost exactly one
   * refresh, so faults are queued and stats reset before the session is stored.
   */

  /** One GetToken through replica i, alternating Connect and grpc-js; resolves to the token or the error code. */
  async function getToken(i: number, user: string, sessionId: string, timeoutMs = 15_000): Promise<string> {
    const r = replicas[i % replicas.length]!;
    if (i % 2 === 0) {
      return (await r.client.getToken({ userId: user, sessionId }, { timeoutMs })).token;
    }
    return (await r.grpcJs.call("GetToken", { user_id: user, session_id: sessionId }, { deadlineMs: timeoutMs })).token as string;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-replicas-"));
    [postgres, provider] = await Promise.all([startPostgres(), startTestProvider()]);
    databaseUrl = await createTestDatabase(postgres.url);
    const configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      stringify({
        providers: [
          provider.configEntry(),
        ],
        refresh: {
          lease_seconds: 9, // room for both 3 s attempts within the lease (a third of it is kept for storing the result)
          // Above what a provider on a loaded 2-core machine takes to answer (it runs in this process), yet bounded.
          provider_timeout_seconds: 3,
          max_attempts: 2,
          retry_base_delay_ms: 50,
          background: { interval_seconds: 1 },
        },
        shutdown_grace_seconds: 2,
      }),
    );
    env = {
      DATABASE_URL: databaseUrl,
      TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("replicas"),
      TOKEN_SERVICE_CONFIG: configFile,
    };
    replicas.push(...(await Promise.all([startReplica(), startReplica(), startReplica()])));
  });

  afterAll(async () => {
    for (const r of replicas) {
      r.grpcJs.close();
      r.proc.kill("SIGKILL");
    }
    await provider?.close();
    await postgres?.destroy();
    rmSync(dir, { recursive: true, force: true });
  });

  beforeEach(() => {
    provider.faults.length = 0;
    provider.resetStats();
  });

  it("storms of concurrent callers over all replicas cost one refresh each, with no invalid_grant", async () => {
    for (let round = 0; round < 5; round++) {
      const user = `storm-${round}`;
      provider.resetStats();
      provider.faults.push({ kind: "delay", ms: 150 });
      const { sessionId, accessToken } = await storeExpired(user);
      const results = await Promise.allSettled(Array.from({ length: 300 }, (_, i) => getToken(i, user, sessionId)));
      const failed = results.filter((r) => r.status === "rejected");
      expect(failed, `round ${round}: ${failed.map((f) => String((f as PromiseRejectedResult).reason)).join("; ")}`).toHaveLength(0);
      const tokens = new Set(results.map((r) => (r as PromiseFulfilledResult<string>).value));
      expect(tokens.size).toBe(1);
      expect(tokens.has(accessToken)).toBe(false);
      expect(provider.stats.refreshes).toBe(1);
      expect(provider.stats.maxConcurrentRefreshes).toBe(1);
      expect(provider.stats.invalidGrants).toBe(0);
    }
  });

  it("drops a revoked or refreshed session from every replica's cache at once", async () => {
    const tokens = await provider.login("cached");
    const { sessionId } = await replicas[0]!.client.storeSession({
      userId: "cached",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 3600n },
    });
    // Warm every replica's cache.
    for (const r of replicas) {
      for (let i = 0; i < 3; i++) expect((await r.client.getToken({ userId: "cached", sessionId })).token).toBe(tokens.access_token);
    }
    // A forced refresh on one replica: the others answer with the new token on their very next call.
    const fresh = await replicas[0]!.client.getToken({ userId: "cached", sessionId, forceRefresh: true });
    expect(fresh.token).not.toBe(tokens.access_token);
    // The refreshing replica itself answers with the new token at once; the others within NOTIFY delivery time.
    expect((await replicas[0]!.client.getToken({ userId: "cached", sessionId })).token).toBe(fresh.token);
    const seenAt = Date.now();
    await until(
      async () =>
        (await Promise.all(replicas.map((r) => r.client.getToken({ userId: "cached", sessionId })))).every(
          (t) => t.token === fresh.token,
        ),
      10_000, // well inside the cache's 30 s max age: only the NOTIFY can have done it
      "every replica to serve the refreshed token",
    );
    const refreshSpreadMs = Date.now() - seenAt;
    // A revoke on one replica: refused there at once, and everywhere within NOTIFY delivery time.
    await replicas[2]!.client.revokeSession({ userId: "cached", sessionId });
    const revokedAt = Date.now();
    const codeOf = (r: Replica) => r.client.getToken({ userId: "cached", sessionId }).then(() => -1, (e: ConnectError) => e.code as number);
    expect(await codeOf(replicas[2]!)).toBe(Code.NotFound);
    await until(
      async () => (await Promise.all(replicas.map(codeOf))).every((c) => c === Code.NotFound),
      10_000, // as above
      "every replica to refuse the revoked session",
    );
    // Reported, not asserted (timing): how long the other replicas took to hear of it.
    console.log(`cache invalidation across replicas: refresh seen in ${refreshSpreadMs} ms, revoke in ${Date.now() - revokedAt} ms`);
  });

  it("gives bounded answers while the provider hangs, fails or throttles, and keeps the session", async () => {
    // Hang: both attempts time out after 3 s each, and the service itself answers UNAVAILABLE. Bounded by the
    // provider timeout, not by the callers' deadline: a caller whose 30 s deadline ran out would see
    // DEADLINE_EXCEEDED instead, however slow the machine (the wall clock is not asserted).
    // A caller that reaches its replica only after a refresh has failed rightly starts another; on a slow machine some
    // do, so the provider hangs for up to four refreshes (two attempts each), and what is left is cleared after.
    provider.faults.push(...Array.from({ length: 8 }, () => ({ kind: "hang" as const })));
    const { sessionId } = await storeExpired("faulty");
    const hung = await Promise.allSettled(Array.from({ length: 30 }, (_, i) => getToken(i, "faulty", sessionId, 30_000)));
    provider.faults.length = 0;
    expect(hung.every((r) => r.status === "rejected")).toBe(true);
    const codes = new Set(
      hung.map((r) => {
        const reason = (r as PromiseRejectedResult).reason as { code?: unknown };
        return typeof reason.code === "number" ? reason.code : -1;
      }),
    );
    // Connect reports Code.Unavailable (14); grpc-js reports status 14 too.
    expect([...codes]).toEqual([Code.Unavailable]);
    // Single flight across the three replicas: the 30 callers cost the two attempts of one refresh, or of a few.
    expect(provider.stats.refreshes).toBeGreaterThanOrEqual(2);
    expect(provider.stats.refreshes).toBeLessThanOrEqual(8);
    expect(provider.stats.invalidGrants).toBe(0);
    // The provider notices an abandoned hung request only when its socket's close reaches it, which on a busy
    // machine can come after the retry arrived: concurrency is counted afresh once both are closed.
    await until(() => provider.inflightTokenRequests() === 0, 30_000, "the provider to see the abandoned requests closed");
    provider.resetStats();

    // 500 twice: UNAVAILABLE again, session kept.
    provider.faults.push({ kind: "status", status: 500 }, { kind: "status", status: 500 });
    const failing = await replicas[1]!.client.getToken({ userId: "faulty", sessionId }).catch((e: unknown) => e);
    expect((failing as ConnectError).code).toBe(Code.Unavailable);

    // 429 with Retry-After: 1, then fine.
    provider.faults.push({ kind: "status", status: 429, retryAfter: "1" });
    const token = await getToken(2, "faulty", sessionId);
    expect(token).toBeTruthy();
    expect(provider.stats.invalidGrants).toBe(0);
    expect(provider.stats.maxConcurrentRefreshes).toBe(1);
    const [row] = await query("select status from sessions where id = $1", [sessionId]);
    expect(row!.status).toBe("active");
  });

  it("completes a refresh orphaned by a killed replica on another one", async () => {
    provider.faults.push({ kind: "hang" });
    const { sessionId, accessToken } = await storeExpired("orphan");
    const calls = replicas.map((_, i) =>
      getToken(i, "orphan", sessionId, 30_000).then(
        (token) => ({ i, token }),
        (err: unknown) => ({ i, err }),
      ),
    );
    await until(() => provider.stats.refreshes === 1, 10_000, "the first refresh to reach the provider");
    const [row] = await query("select lease_owner from sessions where id = $1", [sessionId]);
    const ownerPid = Number(String(row!.lease_owner).split("-")[0]);
    const victim = replicas.findIndex((r) => r.proc.child.pid === ownerPid);
    expect(victim).toBeGreaterThanOrEqual(0);
    const killedAt = Date.now();
    replicas[victim]!.proc.kill("SIGKILL");

    const results = await Promise.all(calls);
    const tookMs = Date.now() - killedAt;
    const survivors = results.filter((r) => r.i !== victim);
    for (const s of survivors) {
      expect("token" in s ? s.token : String((s as { err: unknown }).err)).not.toBe(accessToken);
      expect("token" in s).toBe(true);
    }
    expect(new Set(survivors.map((s) => (s as { token: string }).token)).size).toBe(1);
    expect(tookMs).toBeLessThan(60_000);
    expect(provider.stats.refreshes).toBe(2);
    expect(provider.stats.invalidGrants).toBe(0);

    // Replace the killed replica for the tests that follow.
    replicas[victim]!.grpcJs.close();
    replicas[victim] = await startReplica();
  });

  it("survives a PostgreSQL stop and start under load, without a restart", async () => {
    const tokens = await provider.login("steady");
    const { sessionId } = await replicas[0]!.client.storeSession({
      userId: "steady",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 3600n },
    });
    const outcomes: Array<{ replica: number; ok: boolean; code?: number; ms: number; at: number }> = [];
    let running = true;
    const loops = replicas.map(async (r, replica) => {
      while (running) {
        const t0 = Date.now();
        try {
          await r.client.getToken({ userId: "steady", sessionId }, { timeoutMs: 20_000 });
          outcomes.push({ replica, ok: true, ms: Date.now() - t0, at: t0 });
        } catch (err) {
          outcomes.push({ replica, ok: false, code: (err as ConnectError).code, ms: Date.now() - t0, at: t0 });
        }
        await sleep(25);
      }
    });
    await sleep(500);
    const healthOf = (r: Replica) =>
      createClient(Health, createGrpcTransport({ baseUrl: r.proc.url }))
        .check({ service: "tokenservice.v1.TokenService" }, { timeoutMs: 2000 })
        .then((res) => res.status);
    expect(await Promise.all(replicas.map(healthOf))).toEqual(replicas.map(() => ServingStatus.SERVING));
    const stoppedAt = Date.now();
    await postgres.stopServer();
    // The health protocol follows the database: NOT_SERVING on every replica while it is down.
    await until(
      async () => (await Promise.all(replicas.map(healthOf))).every((s) => s === ServingStatus.NOT_SERVING),
      10_000,
      "every replica to report NOT_SERVING",
    );
    await sleep(1000);
    await postgres.startServer();
    const restartedAt = Date.now();
    // Every replica answers successfully again, by itself.
    await until(
      () => replicas.every((_, i) => outcomes.some((o) => o.replica === i && o.ok && o.at > restartedAt)),
      30_000,
      "all replicas to recover",
    );
    running = false;
    await Promise.all(loops);
    await until(
      async () => (await Promise.all(replicas.map(healthOf))).every((s) => s === ServingStatus.SERVING),
      10_000,
      "every replica to report SERVING again",
    );

    const during = outcomes.filter((o) => o.at > stoppedAt + 200 && o.at < restartedAt - 200);
    expect(during.length).toBeGreaterThan(0);
    expect(during.some((o) => !o.ok)).toBe(true);
    // Bounded by the service, not by the callers' 20 s deadline: failures are UNAVAILABLE, none is DEADLINE_EXCEEDED
    // (what a caller whose deadline ran out would see), and no call outlived the database bounds (connect 3 s, acquire 5 s,
    // statement 5 s: 13 s at the very worst) on however busy a machine.
    for (const o of during.filter((x) => !x.ok)) expect(o.code).toBe(Code.Unavailable);
    expect(outcomes.filter((o) => o.code === Code.DeadlineExceeded)).toEqual([]);
    expect(Math.max(...outcomes.map((o) => o.ms))).toBeLessThan(15_000);
    expect((await replicas[2]!.client.getToken({ userId: "steady", sessionId })).token).toBe(tokens.access_token);
  });

  it("keeps an active 20-second token fresh with no callers, refreshed by one replica at a time", async () => {
    provider.setAccessTokenTtl(20);
    try {
      const tokens = await provider.login("background");
      expect(tokens.expires_in).toBe(20);
      const { sessionId } = await replicas[0]!.client.storeSession({
        userId: "background",
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 20n },
      });
      provider.resetStats();
      let minHeadroomMs = Infinity;
      const versions = new Set<number>();
      const watchUntil = Date.now() + 30_000;
      while (Date.now() < watchUntil) {
        const [row] = await query("select access_expires_at, version from sessions where id = $1", [sessionId]);
        minHeadroomMs = Math.min(minHeadroomMs, new Date(row!.access_expires_at as string).getTime() - Date.now());
        versions.add(Number(row!.version));
        await sleep(250);
      }
      // Always valid, never even inside the 10 s margin: callers would never have waited.
      expect(minHeadroomMs).toBeGreaterThan(10_000);
      expect(provider.stats.refreshes).toBeGreaterThanOrEqual(3);
      expect(provider.stats.refreshes).toBeLessThanOrEqual(8);
      // Every refresh at the provider became a stored version (one may still be in flight right now).
      const [last] = await query("select version from sessions where id = $1", [sessionId]);
      const stored = Number(last!.version) - Math.min(...versions);
      expect(provider.stats.refreshes - stored).toBeGreaterThanOrEqual(0);
      expect(provider.stats.refreshes - stored).toBeLessThanOrEqual(1);
      expect(provider.stats.maxConcurrentRefreshes).toBe(1);
      expect(provider.stats.invalidGrants).toBe(0);

      const before = provider.stats.refreshes;
      const got = await replicas[1]!.client.getToken({ userId: "background", sessionId });
      expect(provider.stats.refreshes).toBe(before);
      expect(Number(got.expiresAt!.seconds) * 1000 - Date.now()).toBeGreaterThan(10_000);
    } finally {
      provider.setAccessTokenTtl(300);
    }
  });
});
