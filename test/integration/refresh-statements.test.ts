import { randomBytes } from "node:crypto";
import type { MikroORM } from "@mikro-orm/core";
import pg from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { migrateUp, openOrm } from "../../src/db/orm.js";
import { CHANNEL } from "../../src/db/pg-channel.js";
import { SessionRepository, type RefreshedFields } from "../../src/db/session-repository.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { createTestDatabase } from "../helpers/service.js";
import { sessionRow } from "../helpers/session-row.js";

/**
 * The refresh path's prepared statements on PostgreSQL (src/db/refresh-statements.ts):
 * the compare-and-set write sends its NOTIFY in the same statement, only when it wrote.
 */
describe("refresh statements on postgresql", () => {
  let orm: MikroORM;
  let repo: SessionRepository;
  let listener: pg.Client;
  const heard: string[] = [];
  const vault = new TokenVault(parseKeyRing(generateKeySpec("k1")));

  beforeAll(async () => {
    const url = await createTestDatabase(inject("postgresUrl"));
    orm = await openOrm({ kind: "postgresql", url });
    await migrateUp(orm, { kind: "postgresql", url });
    repo = new SessionRepository(orm, "postgresql");
    listener = new pg.Client({ connectionString: url });
    await listener.connect();
    listener.on("notification", (n) => {
      // The outbox's "events" wake-ups share the channel; only session changes count here.
      if (n.channel === CHANNEL && n.payload && n.payload !== "events") heard.push(n.payload);
    });
    await listener.query(`listen ${CHANNEL}`);
  });
  afterAll(async () => {
    await listener?.end();
    await repo?.close();
    await orm?.close(true);
  });

  async function leased(userId: string) {
    const now = new Date();
    const id = randomBytes(32).toString("base64url");
    await repo.insert(sessionRow(vault, { id, userId, provider: "corp" }, { access: "at-1", refresh: "rt-1", id: undefined }, { now }));
    const row = await repo.acquireLease(id, 1, `${userId}-owner`, now, new Date(now.getTime() + 30_000));
    expect(row).not.toBeNull();
    return row!;
  }

  function fields(row: { id: string; userId: string; provider: string }, access: string): RefreshedFields {
    const now = new Date();
    const { keyId, accessCt, refreshCt, idCt, tokenType, scope, accessExpiresAt, accessIssuedAt, idExpiresAt, refreshExpiresAt } = sessionRow(
      vault,
      row,
      { access, refresh: `r-${access}`, id: undefined },
      { now },
    );
    return { keyId, accessCt, refreshCt, idCt, tokenType, scope, accessExpiresAt, accessIssuedAt, idExpiresAt, refreshExpiresAt, refreshAt: new Date(now.getTime() + 240_000), keepAliveAt: null };
  }

  /** Resolves once `n` messages were heard (each write below is awaited first, so order is commit order). */
  async function heardCount(n: number): Promise<string[]> {
    while (heard.length < n) await new Promise((r) => setTimeout(r, 10));
    return [...heard];
  }

  it("sends the notice with a write that wins, none with one that loses, and one with a recovery", async () => {
    heard.length = 0;
    const a = await leased("notice-a");
    const now = new Date();
    expect(await repo.completeRefresh(a.id, "notice-a-owner", 1, fields(a, "at-2"), now, { channel: CHANNEL, message: "changed:a" })).toBe(true);
    expect((await repo.findById(a.id))!.version).toBe(2);
    // The same write again: the version moved on, so nothing is written and nothing announced.
    expect(await repo.completeRefresh(a.id, "notice-a-owner", 1, fields(a, "at-3"), now, { channel: CHANNEL, message: "changed:lost" })).toBe(false);

    // A failing session recovers in a transaction that also appends session.recovered; the notice goes with it.
    const b = await leased("notice-b");
    expect(await repo.releaseLease(b.id, "notice-b-owner", "http_500", new Date())).toBe(true);
    const again = await repo.acquireLease(b.id, 1, "notice-b-owner", new Date(), new Date(Date.now() + 30_000));
    expect(again!.refreshFailures).toBe(1);
    const before = await repo.events.latest();
    expect(await repo.completeRefresh(b.id, "notice-b-owner", 1, fields(b, "at-2"), new Date(), { channel: CHANNEL, message: "changed:b" })).toBe(true);
    const recovered = await repo.events.readAfter(before, { userId: "notice-b" }, 10);
    expect(recovered.events.map((e) => e.kind)).toEqual(["session.recovered"]);
    expect((await repo.findById(b.id))!.refreshFailures).toBe(0);

    // Without a notice, nothing is sent by the write.
    const c = await leased("notice-c");
    expect(await repo.completeRefresh(c.id, "notice-c-owner", 1, fields(c, "at-2"), new Date())).toBe(true);
    await repo.notify(CHANNEL, "changed:end");

    const messages = await heardCount(3);
    expect(messages).toEqual(["changed:a", "changed:b", "changed:end"]);
  });
});
