import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MikroORM } from "@mikro-orm/core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { DatabaseConfig } from "../../src/config.js";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { EventCursorExpiredError, EventRepository } from "../../src/db/event-repository.js";
import { migrateUp, openOrm } from "../../src/db/orm.js";
import type { SessionRow } from "../../src/db/session-entity.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import type { EventCursor, NewEvent, StoredEvent } from "../../src/events/types.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { createTestDatabase, type Dialect } from "../helpers/service.js";
import { sessionRow } from "../helpers/session-row.js";

const vault = new TokenVault(parseKeyRing(generateKeySpec("k1")));

function note(userId: string): NewEvent {
  return { kind: "session.created", provider: "corp", userId, sessionId: null, reason: null };
}

/** The outbox through its repository, on both dialects: what each status change appends, cursors, retention. */
describe.each<Dialect>(["sqlite", "postgresql"])("event outbox on %s", (dialect) => {
  let orm: MikroORM;
  let repo: SessionRepository;
  let events: EventRepository;
  let dir: string;

  async function insert(userId: string): Promise<SessionRow> {
    const id = randomBytes(32).toString("base64url");
    const row = sessionRow(vault, { id, userId, provider: "corp" }, { access: "at-secret-1", refresh: "rt-secret-1", id: undefined });
    await repo.insert(row);
    return row;
  }

  /** Every event after `cursor` (all pages). */
  async function all(cursor: EventCursor, userId?: string): Promise<StoredEvent[]> {
    const out: StoredEvent[] = [];
    for (;;) {
      const page = await events.readAfter(cursor, userId ? { userId } : {}, 3);
      out.push(...page.events);
      if (page.next === cursor) return out;
      cursor = page.next;
    }
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-outbox-"));
    const db: DatabaseConfig =
      dialect === "sqlite" ? { kind: "sqlite", path: join(dir, "s.db") } : { kind: "postgresql", url: await createTestDatabase(inject("postgresUrl")) };
    orm = await openOrm(db);
    await migrateUp(orm, db);
    events = new EventRepository(orm, dialect);
    repo = new SessionRepository(orm, dialect, events);
  });
  afterAll(async () => {
    await orm?.close(true);
    rmSync(dir, { recursive: true, force: true });
  });

  it("appends one event per status change, in the change's transaction, and never a token", async () => {
    const start = await events.latest();
    const row = await insert("transitions");
    const now = new Date();
    const lease = async () => (await repo.acquireLease(row.id, (await repo.findById(row.id))!.version, "r1", now, new Date(now.getTime() + 30_000)))!;
    // Two failures in a row: one refresh_failing (the transition), a count of 2.
    await lease();
    expect(await repo.releaseLease(row.id, "r1", "provider_unavailable", now)).toBe(true);
    await lease();
    expect(await repo.releaseLease(row.id, "r1", "provider_timeout", new Date(now.getTime() + 1000))).toBe(true);
    const failing = (await repo.findById(row.id))!;
    expect(failing.refreshFailures).toBe(2);
    expect(failing.failingSince!.getTime()).toBe(now.getTime());
    expect(failing.lastErrorCode).toBe("provider_timeout");
    // A success ends the run: recovered, once.
    const leased = await lease();
    const fields = { ...vault.sealAll(row, { access: "at-secret-2", refresh: "rt-secret-2", id: undefined }), tokenType: "Bearer", scope: "", accessExpiresAt: now, accessIssuedAt: now, idExpiresAt: null, refreshExpiresAt: null };
    expect(await repo.completeRefresh(row.id, "r1", leased.version, fields, now)).toBe(true);
    expect((await repo.findById(row.id))!.refreshFailures).toBe(0);
    // A success that was not failing appends nothing.
    const again = await lease();
    expect(await repo.completeRefresh(row.id, "r1", again.version, fields, now)).toBe(true);
    // The provider refuses: reauth_required with its reason.
    const last = await lease();
    expect(await repo.markReauth(row.id, last.version, "r1", "invalid_grant", now)).toBe(true);
    expect((await repo.findById(row.id))!.reauthAt!.getTime()).toBe(now.getTime());
    // RevokeSession: revoked, and the metadata kept without tokens.
    expect(await repo.deleteForUser(row.id, "transitions")).not.toBeNull();
    expect(await repo.findById(row.id)).toBeNull();
    const ended = await repo.listEndedForUser("transitions", undefined, 10);
    expect(ended).toMatchObject([{ id: row.id, provider: "corp", status: "revoked", reason: "revoke_session" }]);

    const seen = await all(start, "transitions");
    expect(seen.map((e) => [e.kind, e.reason])).toEqual([
      ["session.created", null],
      ["session.refresh_failing", "provider_unavailable"],
      ["session.recovered", null],
      ["session.reauth_required", "invalid_grant"],
      ["session.revoked", "revoke_session"],
    ]);
    expect(seen.every((e) => e.sessionId === row.id && e.userId === "transitions" && e.provider === "corp")).toBe(true);
    expect(seen.map((e) => e.cursor)).toEqual([...seen.map((e) => e.cursor)].sort((a, b) => a - b));
    expect(new Set(seen.map((e) => e.id)).size).toBe(seen.length);
    expect(JSON.stringify(seen)).not.toMatch(/secret/);
    expect(JSON.stringify(ended)).not.toMatch(/secret/);
  });

  it("a change that rolls back announces nothing", async () => {
    const before = await events.latest();
    await expect(
      events.transactional(async () => {
        throw new Error("the change failed");
      }),
    ).rejects.toThrow("the change failed");
    await expect(
      orm.em.fork().transactional(async (tx) => {
        await events.appendIn(tx, [note("rolled-back")]);
        throw new Error("after the append");
      }),
    ).rejects.toThrow("after the append");
    expect((await events.readAfter(before, { userId: "rolled-back" }, 10)).events).toEqual([]);
  });

  it("a filtered read skips what does not match without missing what does", async () => {
    const start = await events.latest();
    await events.append([note("f-other"), note("f-other"), note("f-me"), note("f-other")]);
    const page = await events.readAfter(start, { userId: "f-me", kinds: ["session.created"] }, 10);
    expect(page.events.map((e) => e.userId)).toEqual(["f-me"]);
    expect(page.next).toBe(await events.latest());
    expect((await events.readAfter(start, { providers: [] }, 10)).events).toEqual([]);
    expect((await events.readAfter(start, { kinds: ["provider.deleted"] }, 10)).events).toEqual([]);
  });

  it("refuses a cursor older than what was purged, and keeps serving one within retention", async () => {
    await events.append([note("old-1"), note("old-2")]);
    const cut = new Date(Date.now() + 1);
    const oldest = (await events.readAfter(0, { userId: "old-1" }, 1)).events[0]!;
    await new Promise((r) => setTimeout(r, 5));
    await events.append([note("new-1")]);
    const purged = await events.purge(cut, 1000);
    expect(purged).toBeGreaterThanOrEqual(2);
    const horizon = await events.horizon();
    expect(horizon).toBeGreaterThanOrEqual(oldest.cursor);
    await expect(events.readAfter(oldest.cursor - 1, {}, 10)).rejects.toBeInstanceOf(EventCursorExpiredError);
    expect((await events.readAfter(horizon, {}, 10)).events.map((e) => e.userId)).toEqual(["new-1"]);
  });
});

describe("event cursors on postgresql follow commit order", () => {
  let orm: MikroORM;
  let events: EventRepository;

  beforeAll(async () => {
    const db: DatabaseConfig = { kind: "postgresql", url: await createTestDatabase(inject("postgresUrl")) };
    orm = await openOrm(db);
    await migrateUp(orm, db);
    events = new EventRepository(orm, "postgresql");
  });
  afterAll(async () => {
    await orm?.close(true);
  });

  it("a reader that saw a later commit never misses an earlier cursor committed after it", async () => {
    const start = await events.latest();
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    let appended!: () => void;
    const inA = new Promise<void>((r) => (appended = r));
    // A takes its cursor, then stays open.
    const a = orm.em.fork().transactional(async (tx) => {
      await events.appendIn(tx, [note("gap-a")]);
      appended();
      await gate;
    });
    await inA;
    // B commits (or, with the order lock, waits for A).
    const b = events.append([note("gap-b")]);
    await Promise.race([b, new Promise((r) => setTimeout(r, 500))]);
    const first = await events.readAfter(start, {}, 10);
    release();
    await Promise.all([a, b]);
    const rest = await events.readAfter(first.next, {}, 10);
    const users = [...first.events, ...rest.events].map((e) => e.userId);
    expect(users.sort()).toEqual(["gap-a", "gap-b"]);
  });

  it("many concurrent writers and a reader that keeps its cursor: nothing missed, nothing twice", async () => {
    const start = await events.latest();
    let cursor = start;
    const got: string[] = [];
    let writing = true;
    const reader = (async () => {
      for (;;) {
        const done = !writing;
        const page = await events.readAfter(cursor, {}, 7);
        got.push(...page.events.map((e) => e.userId!));
        cursor = page.next;
        if (done && page.events.length === 0) return;
      }
    })();
    const writers = Array.from({ length: 8 }, (_, w) =>
      (async () => {
        for (let i = 0; i < 15; i++) await events.append([note(`c-${w}-${i}`)]);
      })(),
    );
    await Promise.all(writers);
    writing = false;
    await reader;
    expect(got.length).toBe(120);
    expect(new Set(got).size).toBe(120);
  });
});
