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

  it("background candidates skip sessions that just failed and providers no longer configured", async () => {
    const now = new Date();
    const due = { accessExpiresAt: new Date(now.getTime() + 1000) };
    const ok = await insert({ userId: "bg", ...due });
    await insert({ userId: "bg", ...due, lastErrorAt: now, lastErrorCode: "http_503" });
    await insert({ userId: "bg", ...due, provider: "gone" });
    const candidates = await repo.findRefreshCandidates(now, new Date(now.getTime() - 60_000), new Date(now.getTime() + 60_000), 100, {
      providers: ["corp"],
      failedBefore: new Date(now.getTime() - 10_000),
    });
    expect(candidates.filter((c) => c.userId === "bg").map((c) => c.id)).toEqual([ok.id]);
  });
});
