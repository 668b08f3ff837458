import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MikroORM } from "@mikro-orm/core";
import pg from "pg";
import { afterAll, afterEach, beforeAll, describe, expect, inject, it, vi } from "vitest";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { migrateUp, openOrm } from "../../src/db/orm.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { createTestDatabase, startService, type Dialect } from "../helpers/service.js";
import { sessionRow } from "../helpers/session-row.js";

/**
 * GetToken's last_used_at writes (the background refresher's "recently
 * used" window), batched by sessions/last-used-writer.ts: many uses become
 * one statement, the time never moves backwards, and what is pending is
 * written on a graceful shutdown before the database closes.
 */

/** Counts the statements that write last_used_at: on the prepared-statement pools (PostgreSQL) and through the ORM. */
function countTouchStatements(orm: MikroORM): { count(): number } {
  const pool = vi.spyOn(pg.Pool.prototype, "query");
  const conn = orm.em.getConnection();
  const ormExec = vi.spyOn(conn, "execute");
  const writesLastUsed = (q: unknown) => {
    const text = typeof q === "string" ? q : ((q as { text?: string })?.text ?? String(q));
    return /^\s*update\b/i.test(text) && /last_used_at/.test(text);
  };
  return {
    count: () => [...pool.mock.calls, ...ormExec.mock.calls].filter(([q]) => writesLastUsed(q)).length,
  };
}

/** last_used_at of each id, read on a connection of its own (after the service is gone too). */
async function lastUsedOf(dialect: Dialect, where: string, ids: string[]): Promise<Map<string, number>> {
  const orm = await openOrm(dialect === "sqlite" ? { kind: "sqlite", path: where } : { kind: "postgresql", url: where });
  try {
    const repo = new SessionRepository(orm, dialect);
    const out = new Map<string, number>();
    for (const id of ids) out.set(id, (await repo.findById(id))!.lastUsedAt.getTime());
    await repo.close();
    return out;
  } finally {
    await orm.close(true);
  }
}

describe.each<Dialect>(["sqlite", "postgresql"])("last_used_at writes on %s", (dialect) => {
  const vault = new TokenVault(parseKeyRing(generateKeySpec("k1")));
  const dirs: string[] = [];

  afterEach(() => {
    vi.restoreAllMocks();
  });
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  async function database(): Promise<string> {
    if (dialect === "postgresql") return createTestDatabase(inject("postgresUrl"));
    const dir = mkdtempSync(join(tmpdir(), "last-used-"));
    dirs.push(dir);
    return join(dir, "s.db");
  }

  describe("the repository's batch write", () => {
    let orm: MikroORM;
    let repo: SessionRepository;
    let where: string;
    beforeAll(async () => {
      where = await database();
      const db = dialect === "sqlite" ? ({ kind: "sqlite", path: where } as const) : ({ kind: "postgresql", url: where } as const);
      orm = await openOrm(db);
      await migrateUp(orm, db);
      repo = new SessionRepository(orm, dialect);
    });
    afterAll(async () => {
      await repo?.close();
      await orm?.close(true);
    });

    it("writes each session its own time in one statement, and never moves a time backwards", async () => {
      const t0 = Date.UTC(2026, 0, 1, 12);
      const ids = ["a", "b", "c"].map((k) => `${k}-${randomBytes(8).toString("hex")}`);
      for (const id of ids) await repo.insert(sessionRow(vault, { id, userId: "u", provider: "corp" }, { access: "at", refresh: "rt", id: undefined }, { now: new Date(t0), lastUsedAt: new Date(t0) }));
      const statements = countTouchStatements(orm);
      // c's time is older than the one it has: it stays.
      const written = await repo.touchMany(ids, [new Date(t0 + 5_000), new Date(t0 + 7_000), new Date(t0 - 60_000)]);
      expect(statements.count()).toBe(1);
      expect(written).toBe(2);
      expect([...(await lastUsedOf(dialect, where, ids)).values()]).toEqual([t0 + 5_000, t0 + 7_000, t0]);
      // Once more, one older and one newer: only the newer moves.
      expect(await repo.touchMany([ids[0]!, ids[1]!], [new Date(t0 + 1_000), new Date(t0 + 9_000)])).toBe(1);
      expect([...(await lastUsedOf(dialect, where, ids)).values()]).toEqual([t0 + 5_000, t0 + 9_000, t0]);
    });
  });

  describe("GetToken through the service", () => {
    /** Sessions last used an hour ago (past the 60 s resolution), written straight into the service's database. */
    async function staleSessions(orm: MikroORM, keys: string, n: number): Promise<Array<{ id: string; userId: string }>> {
      const own = new TokenVault(parseKeyRing(keys));
      const repo = new SessionRepository(orm, dialect);
      const hourAgo = new Date(Date.now() - 3_600_000);
      const out: Array<{ id: string; userId: string }> = [];
      for (let i = 0; i < n; i++) {
        const s = { id: randomBytes(32).toString("base64url"), userId: `user-${i}` };
        await repo.insert(sessionRow(own, { ...s, provider: "corp" }, { access: `at-${i}`, refresh: `rt-${i}`, id: undefined }, { now: hourAgo, accessExpiresAt: new Date(Date.now() + 3_600_000) }));
        out.push(s);
      }
      await repo.close();
      return out;
    }

    it("writes the uses of many calls in one statement, on shutdown at the latest, before the database closes", async () => {
      const where = await database();
      const keys = generateKeySpec("k1");
      // The flush timer is an hour: only a full batch or the shutdown writes.
      const svc = await startService({
        dialect,
        keys,
        ...(dialect === "sqlite" ? { sqlitePath: where } : { databaseUrl: where }),
        configure: (c) => ({ ...c, lastUsedBatch: { flushMs: 3_600_000 } }),
      });
      try {
        const sessions = await staleSessions(svc.app.orm, keys, 30);
        const before = await lastUsedOf(dialect, where, sessions.map((s) => s.id));
        const statements = countTouchStatements(svc.app.orm);
        const start = Date.now();
        for (const s of sessions) expect((await svc.client.getToken({ userId: s.userId, sessionId: s.id })).token).toMatch(/^at-/);
        // Recorded, not yet written.
        expect(await lastUsedOf(dialect, where, sessions.map((s) => s.id))).toEqual(before);
        expect(statements.count()).toBe(0);
        await svc.app.close();
        expect(statements.count()).toBe(1);
        const after = await lastUsedOf(dialect, where, sessions.map((s) => s.id));
        for (const s of sessions) expect(after.get(s.id)).toBeGreaterThanOrEqual(start);
      } finally {
        await svc.close();
      }
    });

    it("writes a use within about a second, without a shutdown", async () => {
      const where = await database();
      const keys = generateKeySpec("k1");
      const svc = await startService({ dialect, keys, ...(dialect === "sqlite" ? { sqlitePath: where } : { databaseUrl: where }) });
      try {
        const [s] = await staleSessions(svc.app.orm, keys, 1);
        const start = Date.now();
        await svc.client.getToken({ userId: s!.userId, sessionId: s!.id });
        // Waits for the write (the flush interval is a second); a hang fails the test at its timeout.
        let seen = 0;
        while (seen < start) {
          await new Promise((r) => setTimeout(r, 100));
          seen = (await lastUsedOf(dialect, where, [s!.id])).get(s!.id)!;
        }
        expect(seen).toBeGreaterThanOrEqual(start);
        // A second call within the resolution window records nothing more.
        const statements = countTouchStatements(svc.app.orm);
        await svc.client.getToken({ userId: s!.userId, sessionId: s!.id });
        await svc.app.close();
        expect(statements.count()).toBe(0);
      } finally {
        await svc.close();
      }
    });
  });
});
