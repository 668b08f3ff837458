import { randomBytes } from "node:crypto";
import type { MikroORM } from "@mikro-orm/core";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { migrateUp, openOrm } from "../../src/db/orm.js";
import { MAX_BATCH_IDS, pgSessionReader, type SessionReader } from "../../src/db/session-reader.js";
import { DatabaseUnavailableError, SessionRepository } from "../../src/db/session-repository.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { freePort, startPostgres } from "../helpers/postgres.js";
import { createTestDatabase, startService } from "../helpers/service.js";
import { sessionRow } from "../helpers/session-row.js";
import type { GrpcJsError } from "../helpers/clients.js";

/**
 * GetToken's cache-miss reads on PostgreSQL (src/db/session-reader.ts,
 * src/db/lookup-batcher.ts): the findForUser calls of one event-loop turn
 * are one statement, and each caller still gets only its own user's row.
 */

type Session = { id: string; userId: string };

/** The reader's statements, by prepared-statement name, with their parameters. */
function statementsOf(pool: pg.Pool): () => Array<{ name: string; values: unknown[] }> {
  const spy = vi.spyOn(pool, "query");
  return () =>
    spy.mock.calls.map(([q]) => {
      const c = q as unknown as { name?: string; values?: unknown[] };
      return { name: c.name ?? "", values: c.values ?? [] };
    });
}

/** Sessions written straight into the database, each user's access token `at-<user>`. */
async function insertSessions(repo: SessionRepository, vault: TokenVault, prefix: string, n: number): Promise<Session[]> {
  const out: Session[] = [];
  for (let i = 0; i < n; i++) {
    const s = { id: randomBytes(32).toString("base64url"), userId: `${prefix}-${i}` };
    await repo.insert(sessionRow(vault, { ...s, provider: "corp" }, { access: `at-${s.userId}`, refresh: `rt-${i}`, id: undefined }, { accessExpiresAt: new Date(Date.now() + 3_600_000) }));
    out.push(s);
  }
  return out;
}

describe("the PostgreSQL session reader", () => {
  const vault = new TokenVault(parseKeyRing(generateKeySpec("k1")));
  let url: string;
  let orm: MikroORM;
  let repo: SessionRepository;
  let pool: pg.Pool;
  let reader: SessionReader;
  let sessions: Session[];

  beforeAll(async () => {
    url = await createTestDatabase(inject("postgresUrl"));
    orm = await openOrm({ kind: "postgresql", url });
    await migrateUp(orm, { kind: "postgresql", url });
    repo = new SessionRepository(orm, "postgresql");
    sessions = await insertSessions(repo, vault, "reader", 150);
    pool = new pg.Pool({ connectionString: url, max: 10 });
    reader = pgSessionReader(pool);
  });
  afterEach(() => {
    vi.restoreAllMocks();
  });
  afterAll(async () => {
    await reader?.close();
    await repo?.close();
    await orm?.close(true);
  });

  it("reads the calls of one turn in one statement, each caller its own row", async () => {
    const statements = statementsOf(pool);
    const some = sessions.slice(0, 40);
    const heads = await Promise.all(some.map((s) => reader.findForUser(s.id, s.userId)));
    expect(heads.map((h) => [h?.id, h?.userId])).toEqual(some.map((s) => [s.id, s.userId]));
    expect(heads.map((h) => vault.openField(h!, "access"))).toEqual(some.map((s) => `at-${s.userId}`));
    expect(statements()).toEqual([{ name: "ts_sessions_by_ids", values: [some.map((s) => s.id)] }]);
  });

  it(`sends at most ${MAX_BATCH_IDS} ids in one statement`, async () => {
    const statements = statementsOf(pool);
    const heads = await Promise.all(sessions.map((s) => reader.findForUser(s.id, s.userId)));
    expect(heads.map((h) => h?.id)).toEqual(sessions.map((s) => s.id));
    const sent = statements();
    expect(sent.map((q) => q.name)).toEqual(["ts_sessions_by_ids", "ts_sessions_by_ids", "ts_sessions_by_ids"]);
    expect(sent.map((q) => (q.values[0] as string[]).length)).toEqual([MAX_BATCH_IDS, MAX_BATCH_IDS, sessions.length - 2 * MAX_BATCH_IDS]);
    expect(sent.flatMap((q) => q.values[0] as string[])).toEqual(sessions.map((s) => s.id));
  });

  it("answers a lone call with the single-row lookup by id and user", async () => {
    const statements = statementsOf(pool);
    const [s] = sessions;
    expect((await reader.findForUser(s!.id, s!.userId))?.id).toBe(s!.id);
    expect(await reader.findForUser(s!.id, "someone-else")).toBeNull();
    expect(statements()).toEqual([
      { name: "ts_session_by_id", values: [s!.id, s!.userId] },
      { name: "ts_session_by_id", values: [s!.id, "someone-else"] },
    ]);
  });

  it("gives a wrong user and an unknown id null, and the right user its row, in the same batch", async () => {
    const statements = statementsOf(pool);
    const [a, b] = sessions;
    const unknown = randomBytes(32).toString("base64url");
    const [own, stolen, missing] = await Promise.all([
      reader.findForUser(a!.id, a!.userId),
      reader.findForUser(b!.id, a!.userId),
      reader.findForUser(unknown, a!.userId),
    ]);
    expect(own?.id).toBe(a!.id);
    expect(stolen).toBeNull();
    expect(missing).toBeNull();
    expect(statements()).toEqual([{ name: "ts_sessions_by_ids", values: [[a!.id, b!.id, unknown]] }]);
  });

  it("asks for an id once however many callers ask for it, and answers each by its user", async () => {
    const statements = statementsOf(pool);
    const [a] = sessions;
    const [first, second, wrong] = await Promise.all([
      reader.findForUser(a!.id, a!.userId),
      reader.findForUser(a!.id, a!.userId),
      reader.findForUser(a!.id, "not-the-owner"),
    ]);
    expect(first?.id).toBe(a!.id);
    expect(second?.id).toBe(a!.id);
    // Each caller its own head: one caller's changes to it (lastUsedAt) are not another's.
    expect(second).not.toBe(first);
    expect(wrong).toBeNull();
    expect(statements()).toEqual([{ name: "ts_sessions_by_ids", values: [[a!.id]] }]);
  });

  it("rejects every caller of a batch with the error a lone read gets", async () => {
    // A database without the sessions table: the statement itself fails.
    const empty = pgSessionReader(new pg.Pool({ connectionString: await createTestDatabase(inject("postgresUrl")), max: 2 }));
    try {
      const lone = await empty.findForUser(sessions[0]!.id, sessions[0]!.userId).catch((e: unknown) => e);
      expect(lone).toBeInstanceOf(pg.DatabaseError);
      expect((lone as pg.DatabaseError).code).toBe("42P01");
      const batch = await Promise.all(sessions.slice(0, 5).map((s) => empty.findForUser(s.id, s.userId).catch((e: unknown) => e)));
      for (const err of batch) {
        expect(err).toBeInstanceOf(pg.DatabaseError);
        expect((err as pg.DatabaseError).code).toBe("42P01");
      }
    } finally {
      await empty.close();
    }
  });

  it("rejects every caller of a batch with DatabaseUnavailableError when the database cannot be reached, as a lone read", async () => {
    const gone = pgSessionReader(new pg.Pool({ connectionString: `postgres://postgres@127.0.0.1:${await freePort()}/postgres`, max: 2 }));
    try {
      const lone = await gone.findForUser(sessions[0]!.id, sessions[0]!.userId).catch((e: unknown) => e);
      expect(lone).toBeInstanceOf(DatabaseUnavailableError);
      const batch = await Promise.all(sessions.slice(0, 5).map((s) => gone.findForUser(s.id, s.userId).catch((e: unknown) => e)));
      expect(batch.map((e) => e instanceof DatabaseUnavailableError)).toEqual([true, true, true, true, true]);
    } finally {
      await gone.close();
    }
  });
});

describe("GetToken over many sessions on PostgreSQL, cache off", () => {
  it("hands each of many concurrent callers its own user's token, and a wrong user NOT_FOUND", async () => {
    const keys = generateKeySpec("k1");
    const svc = await startService({ dialect: "postgresql", databaseUrl: await createTestDatabase(inject("postgresUrl")), keys, yaml: { cache: { enabled: false } } });
    try {
      const repo = new SessionRepository(svc.app.orm, "postgresql");
      const sessions = await insertSessions(repo, new TokenVault(parseKeyRing(keys)), "e2e", 200);
      await repo.close();
      const tokens = await Promise.all(
        sessions.map((s) => svc.grpcJs.call("GetToken", { user_id: s.userId, session_id: s.id }).then((r) => r.token)),
      );
      expect(tokens).toEqual(sessions.map((s) => `at-${s.userId}`));
      // Every session asked for by the next session's user, among the right users' calls again.
      const mixed = await Promise.all(
        sessions.flatMap((s, i) => [
          svc.grpcJs.call("GetToken", { user_id: s.userId, session_id: s.id }).then((r) => r.token as string),
          svc.grpcJs
            .call("GetToken", { user_id: sessions[(i + 1) % sessions.length]!.userId, session_id: s.id })
            .then(
              () => "answered",
              (e: GrpcJsError) => e.code,
            ),
        ]),
      );
      expect(mixed).toEqual(sessions.flatMap((s) => [`at-${s.userId}`, 5]));
    } finally {
      await svc.close();
    }
  });
});

describe("GetToken through a PostgreSQL outage, cache off", () => {
  it("answers UNAVAILABLE while the database is down, and the same session's token once it is back (a failed read is not kept)", async () => {
    // A cluster of its own: stopping it must not disturb the other test files' databases.
    const postgres = await startPostgres();
    const keys = generateKeySpec("k1");
    const svc = await startService({ dialect: "postgresql", databaseUrl: await createTestDatabase(postgres.url), keys, yaml: { cache: { enabled: false } } });
    try {
      const repo = new SessionRepository(svc.app.orm, "postgresql");
      const [session] = await insertSessions(repo, new TokenVault(parseKeyRing(keys)), "outage", 1);
      const ask = () =>
        svc.grpcJs.call("GetToken", { user_id: session!.userId, session_id: session!.id }).then(
          (r) => r.token as string,
          (e: GrpcJsError) => e.code,
        );
      expect(await ask()).toBe(`at-${session!.userId}`);
      await postgres.stopServer();
      // Concurrent callers of one read share it, and its failure, while it is in flight.
      expect(await Promise.all([ask(), ask(), ask()])).toEqual([14, 14, 14]);
      await postgres.startServer();
      let answer: string | number = 14;
      for (let i = 0; i < 100 && answer === 14; i++) {
        answer = await ask();
        if (answer === 14) await new Promise((resolve) => setTimeout(resolve, 100));
      }
      expect(answer).toBe(`at-${session!.userId}`);
    } finally {
      await svc.close();
      await postgres.destroy();
    }
  });
});
