import { statSync } from "node:fs";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import pg from "pg";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type Dialect, type StartOptions } from "../helpers/service.js";

let provider: TestProvider;
beforeAll(async () => {
  provider = await startTestProvider();
});
afterAll(async () => {
  await provider?.close();
});

async function storeLogin(client: Awaited<ReturnType<typeof startService>>["client"], user: string) {
  const tokens = await provider.login(user);
  const { sessionId } = await client.storeSession({
    userId: user,
    provider: "corp",
    tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: BigInt(tokens.expires_in) },
  });
  return { tokens, sessionId };
}

function reason(err: unknown): string | undefined {
  return err instanceof ConnectError ? err.findDetails(ErrorInfoSchema)[0]?.reason : undefined;
}

describe.each<Dialect>(["sqlite", "postgresql"])("persistence on %s", (dialect) => {
  let dir: string;
  let base: StartOptions;

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-persist-"));
    base = {
      dialect,
      provider,
      sqlitePath: join(dir, "sessions.db"),
      databaseUrl: dialect === "postgresql" ? await createTestDatabase(inject("postgresUrl")) : undefined,
      keys: generateKeySpec("k1"),
    };
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("keeps sessions across a restart", async () => {
    const first = await startService(base);
    const { tokens, sessionId } = await storeLogin(first.client, "rita");
    await first.close();

    const second = await startService(base);
    try {
      const got = await second.grpcJs.call("GetToken", { user_id: "rita", session_id: sessionId });
      expect(got.token).toBe(tokens.access_token);
      // The restarted service still refreshes with the stored refresh token.
      const fresh = await second.client.getToken({ userId: "rita", sessionId, forceRefresh: true });
      expect(fresh.token).not.toBe(tokens.access_token);
    } finally {
      await second.close();
    }
  });

  it("reads old rows after a new primary key is added, and refreshes write under it", async () => {
    const k1 = base.keys!;
    const first = await startService(base);
    const { sessionId } = await storeLogin(first.client, "sam");
    await first.close();

    const rotated = await startService({ ...base, keys: `${generateKeySpec("k2")},${k1}` });
    try {
      expect((await rotated.client.getToken({ userId: "sam", sessionId })).token).toBeTruthy();
      await rotated.client.getToken({ userId: "sam", sessionId, forceRefresh: true });
    } finally {
      await rotated.close();
    }
    const row = await readRow(base, sessionId);
    expect(row.key_id).toBe("k2");
  });

  it("answers KEY_UNAVAILABLE for a row whose key is gone, and keeps serving others", async () => {
    const first = await startService(base);
    const { sessionId } = await storeLogin(first.client, "tom");
    await first.close();

    const other = await startService({ ...base, keys: generateKeySpec("k9") });
    try {
      const err = await other.client.getToken({ userId: "tom", sessionId }).catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
      expect(reason(err)).toBe("KEY_UNAVAILABLE");
      const fresh = await storeLogin(other.client, "tom2");
      expect((await other.client.getToken({ userId: "tom2", sessionId: fresh.sessionId })).token).toBe(
        fresh.tokens.access_token,
      );
    } finally {
      await other.close();
    }
  });

  it("refuses a ciphertext moved into another row (AAD binds it to its session)", async () => {
    const svc = await startService(base);
    try {
      const a = await storeLogin(svc.client, "uma");
      const b = await storeLogin(svc.client, "vic");
      await moveCiphertext(base, a.sessionId, b.sessionId);
      const err = await svc.client.getToken({ userId: "vic", sessionId: b.sessionId }).catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.DataLoss);
      expect(reason(err)).toBe("CORRUPT_SESSION");
      expect((await svc.client.getToken({ userId: "uma", sessionId: a.sessionId })).token).toBe(a.tokens.access_token);
    } finally {
      await svc.close();
    }
  });
});

describe("embedded default without keys", () => {
  it("generates a 0600 key file beside the database, warns, and reuses it on restart", async () => {
    const dir = mkdtempSync(join(tmpdir(), "token-service-keyfile-"));
    try {
      const options: StartOptions = { dialect: "sqlite", provider, sqlitePath: join(dir, "s.db"), sqliteKeyFile: true };
      const first = await startService(options);
      const keyFile = join(dir, "s.db.keys");
      expect(statSync(keyFile).mode & 0o777).toBe(0o600);
      expect(first.logs.lines().some((l) => l.level === "warn" && String(l.msg).includes("generated an encryption key file"))).toBe(true);
      const { tokens, sessionId } = await storeLogin(first.client, "wes");
      await first.close();
      const second = await startService(options);
      try {
        expect((await second.client.getToken({ userId: "wes", sessionId })).token).toBe(tokens.access_token);
      } finally {
        await second.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("refuses to start on PostgreSQL without keys, with a clear message", async () => {
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    await expect(startService({ dialect: "postgresql", databaseUrl, provider, sqliteKeyFile: true })).rejects.toThrow(
      /TOKEN_SERVICE_ENCRYPTION_KEYS is required with PostgreSQL/,
    );
  });
});

async function readRow(options: StartOptions, id: string): Promise<Record<string, unknown>> {
  return withDb(options, async (query) => (await query("select * from sessions where id = $1", [id]))[0]!);
}

async function moveCiphertext(options: StartOptions, from: string, to: string): Promise<void> {
  await withDb(options, async (query) => {
    const [src] = await query("select access_ct, key_id from sessions where id = $1", [from]);
    await query("update sessions set access_ct = $1, key_id = $2 where id = $3", [src!.access_ct, src!.key_id, to]);
  });
}

/** Raw SQL against the test database, bypassing the service. */
async function withDb<T>(
  options: StartOptions,
  fn: (query: (sql: string, params: unknown[]) => Promise<Array<Record<string, unknown>>>) => Promise<T>,
): Promise<T> {
  if (options.dialect === "postgresql") {
    const client = new pg.Client({ connectionString: options.databaseUrl });
    await client.connect();
    try {
      return await fn(async (sql, params) => (await client.query(sql, params)).rows);
    } finally {
      await client.end();
    }
  }
  const { default: Database } = await import("libsql");
  const db = new Database(options.sqlitePath!);
  try {
    return await fn(async (sql, params) => {
      const stmt = db.prepare(sql.replace(/\$\d+/g, "?"));
      const args = params.map((p) => (p instanceof ArrayBuffer ? Buffer.from(p) : p));
      if (sql.trim().startsWith("select")) return stmt.all(...args) as Array<Record<string, unknown>>;
      stmt.run(...args);
      return [];
    });
  } finally {
    db.close();
  }
}
