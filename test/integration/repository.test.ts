import { randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { MikroORM } from "@mikro-orm/core";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import type { DatabaseConfig } from "../../src/config.js";
import { parseKeyRing, generateKeySpec } from "../../src/crypto/key-ring.js";
import { migrateUp, openOrm } from "../../src/db/orm.js";
import { SessionSchema, type SessionRow } from "../../src/db/session-entity.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import { rotateKeys } from "../../src/sessions/key-rotation.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { createTestDatabase, type Dialect } from "../helpers/service.js";
import { sessionRow } from "../helpers/session-row.js";

/** Races between the service's writers, made deterministic by acting through the repository itself. */
describe.each<Dialect>(["sqlite", "postgresql"])("session repository races on %s", (dialect) => {
  let orm: MikroORM;
  let repo: SessionRepository;
  let dir: string;
  const k1 = generateKeySpec("k1");
  const k2 = generateKeySpec("k2");
  const oldVault = new TokenVault(parseKeyRing(k1));
  const newVault = new TokenVault(parseKeyRing(`${k2},${k1}`));

  async function insert(extra: Partial<SessionRow> = {}): Promise<SessionRow> {
    const now = new Date();
    const id = randomBytes(32).toString("base64url");
    const owner = { id, userId: extra.userId ?? "u", provider: extra.provider ?? "corp" };
    const row = sessionRow(oldVault, owner, { access: "at-1", refresh: "rt-1", id: undefined }, {
      now,
      accessExpiresAt: new Date(now.getTime() + 10_000),
      ...extra,
    });
    await repo.insert(row);
    return row;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-repo-"));
    const db: DatabaseConfig =
      dialect === "sqlite" ? { kind: "sqlite", path: join(dir, "s.db") } : { kind: "postgresql", url: await createTestDatabase(inject("postgresUrl")) };
    orm = await openOrm(db);
    await migrateUp(orm, db);
    repo = new SessionRepository(orm, dialect);
  });
  afterAll(async () => {
    await orm?.close(true);
    rmSync(dir, { recursive: true, force: true });
  });

  it("takes a lease in one statement and returns the whole row as leased, typed as a read would give it", async () => {
    const row = await insert({ userId: "lease", refreshCt: Buffer.from("refresh-ct"), idCt: Buffer.from("id-ct") });
    const now = new Date();
    const until = new Date(now.getTime() + 30_000);
    const leased = await repo.acquireLease(row.id, 1, "replica-a", now, until);
    expect(leased).toEqual(await repo.findById(row.id));
    expect(leased!.leaseOwner).toBe("replica-a");
    expect(leased!.leaseUntil!.getTime()).toBe(until.getTime());
    expect(leased!.accessExpiresAt).toBeInstanceOf(Date);
    expect(Buffer.isBuffer(leased!.accessCt) && Buffer.isBuffer(leased!.refreshCt)).toBe(true);
    expect(leased!.refreshCt!.toString()).toBe("refresh-ct");
    // A live lease, or a version that moved on, is not taken.
    expect(await repo.acquireLease(row.id, 1, "replica-b", now, until)).toBeNull();
    expect(await repo.acquireLease(row.id, 2, "replica-b", new Date(until.getTime() + 1), until)).toBeNull();
    // A lapsed lease is taken over.
    const later = new Date(until.getTime() + 1);
    expect((await repo.acquireLease(row.id, 1, "replica-b", later, new Date(later.getTime() + 30_000)))!.leaseOwner).toBe("replica-b");
  });

  it("key rotation leaves a row alone while a replica holds its refresh lease", async () => {
    const row = await insert({ userId: "rot" });
    const now = new Date();
    expect(await repo.acquireLease(row.id, 1, "replica-a", now, new Date(now.getTime() + 30_000))).not.toBeNull();
    const during = await rotateKeys(repo, newVault, { batchSize: 10 });
    expect(during.changedMeanwhile).toBeGreaterThanOrEqual(1);
    expect((await repo.findById(row.id))!.keyId).toBe("k1");
    // The refresh completes at the version it leased, then a second rotation finishes the job.
    const fields = { ...newVault.sealAll(row, { access: "at-2", refresh: "rt-2", id: undefined }) };
    expect(
      await repo.completeRefresh(
        row.id,
        "replica-a",
        1,
        { ...fields, tokenType: "Bearer", scope: "", accessExpiresAt: now, accessIssuedAt: now, idExpiresAt: null, refreshExpiresAt: null },
        now,
      ),
    ).toBe(true);
    const stored = (await repo.findById(row.id))!;
    expect(newVault.openField(stored, "refresh")).toBe("rt-2");
    await rotateKeys(repo, newVault, { batchSize: 10 });
    expect((await repo.findById(row.id))!.keyId).toBe("k2");
  });

  it("a revoke racing a refresh deletes (and returns) the tokens that were really stored", async () => {
    const row = await insert({ userId: "rev" });
    let raced = false;
    const deleted = await repo.deleteForUser(row.id, "rev", async () => {
      if (raced) return;
      raced = true;
      // A refresh lands between the revoke's read and its delete.
      await orm.em
        .fork()
        .nativeUpdate(SessionSchema, { id: row.id }, { ...oldVault.sealAll(row, { access: "at-new", refresh: "rt-new", id: undefined }), version: 2 });
    });
    expect(await repo.findById(row.id)).toBeNull();
    // What comes back (and gets revoked at the provider) is what was deleted: the refreshed tokens.
    expect(deleted!.version).toBe(2);
    expect(oldVault.openField(deleted!, "refresh")).toBe("rt-new");
  });

  /** A batch claim's query for `provider` at `now`: keep-alive after 1 h, used within a minute, leases of 30 s. */
  const claimQuery = (provider: string, now: Date, extra: Partial<Parameters<SessionRepository["claimDue"]>[0]> = {}) => ({
    provider,
    now,
    owner: "replica-a:1",
    until: new Date(now.getTime() + 30_000),
    limit: 100,
    clusterLimit: 100,
    usedSince: new Date(now.getTime() - 60_000),
    horizon: new Date(now.getTime() + 60_000),
    failedBefore: new Date(now.getTime() - 10_000),
    keepAliveIssuedBefore: new Date(now.getTime() - 3_600_000),
    createdAfter: new Date(now.getTime() - 86_400_000),
    ...extra,
  });

  /** The rows a claim took. */
  const claim = async (q: ReturnType<typeof claimQuery>) => (await repo.claimDue(q)).rows;

  it("a batch claim takes the leases of the sessions due, and skips those that just failed, are leased or not due", async () => {
    const now = new Date();
    const past = new Date(now.getTime() - 1000);
    const future = new Date(now.getTime() + 600_000);
    const idle = new Date(now.getTime() - 7_200_000);
    const used = await insert({ provider: "claim-a", refreshAt: past, keepAliveAt: future });
    const legacy = await insert({ provider: "claim-a", refreshAt: null, accessExpiresAt: new Date(now.getTime() + 30_000) });
    const kept = await insert({ provider: "claim-a", lastUsedAt: idle, refreshAt: past, keepAliveAt: past });
    const unscheduled = await insert({ provider: "claim-a", lastUsedAt: idle, accessIssuedAt: idle, refreshAt: past, keepAliveAt: null });
    await insert({ provider: "claim-a", lastUsedAt: idle, refreshAt: past, keepAliveAt: future }); // idle: only keep-alive counts
    await insert({ provider: "claim-a", refreshAt: future, keepAliveAt: future });
    await insert({ provider: "claim-a", refreshAt: past, lastErrorAt: now, lastErrorCode: "http_503" });
    await insert({ provider: "claim-a", refreshAt: past, leaseOwner: "other", leaseUntil: future });
    await insert({ provider: "claim-a", refreshAt: past, refreshCt: null });
    await insert({ provider: "claim-a", lastUsedAt: idle, keepAliveAt: past, createdAt: new Date(now.getTime() - 2 * 86_400_000) }); // past its lifetime
    await insert({ provider: "claim-b", refreshAt: past });
    const claimed = await claim(claimQuery("claim-a", now));
    expect(claimed.map((r) => r.id).sort()).toEqual([used.id, legacy.id, kept.id, unscheduled.id].sort());
    for (const r of claimed) {
      expect(r.leaseOwner).toBe("replica-a:1");
      expect(await repo.findById(r.id)).toMatchObject({ leaseOwner: "replica-a:1", version: 1 });
    }
    // Leased now: a second claim finds nothing; without keep-alive the idle ones would not have been due.
    expect(await repo.claimDue(claimQuery("claim-a", now))).toEqual({ rows: [], more: false });
    const idleOnly = await insert({ provider: "claim-c", lastUsedAt: idle, refreshAt: past, keepAliveAt: past });
    expect(await claim(claimQuery("claim-c", now, { keepAliveIssuedBefore: null }))).toEqual([]);
    expect((await claim(claimQuery("claim-c", now))).map((r) => r.id)).toEqual([idleOnly.id]);
  });

  it("claims keep a provider's live leases within the cluster limit, also when replicas claim at once", async () => {
    const now = new Date();
    const past = new Date(now.getTime() - 1000);
    for (let i = 0; i < 2; i++) await insert({ provider: "claim-limit", leaseOwner: "other", leaseUntil: new Date(now.getTime() + 30_000) });
    for (let i = 0; i < 20; i++) await insert({ provider: "claim-limit", refreshAt: past });
    // A lapsed lease neither counts nor keeps its row from being claimed.
    const lapsed = await insert({ provider: "claim-limit", refreshAt: past, leaseOwner: "dead", leaseUntil: past, accessExpiresAt: new Date(now.getTime() + 1000) });
    const claims = await Promise.all(
      [1, 2, 3, 4].map((i) => claim(claimQuery("claim-limit", now, { owner: `replica-${i}:1`, limit: 3, clusterLimit: 9 }))),
    );
    const ids = claims.flat().map((r) => r.id);
    expect(ids.length).toBe(7); // 9 live leases at most, 2 held already
    expect(new Set(ids).size).toBe(ids.length);
    expect(ids).toContain(lapsed.id); // soonest expiry first
    // The cap is full: nothing taken, but sessions may still be due.
    expect(await repo.claimDue(claimQuery("claim-limit", now, { clusterLimit: 9 }))).toEqual({ rows: [], more: true });
  });
});
