import pg from "pg";
import { describe, expect, it } from "vitest";
import type { SessionHead } from "../../src/db/session-entity.js";
import { sessionRef } from "../../src/logger.js";
import { AdmissionFilter, MAX_TOMBSTONES, SessionCache } from "../../src/sessions/session-cache.js";

function head(id: string, userId = "u"): SessionHead {
  const now = new Date();
  return {
    id,
    userId,
    provider: "corp",
    status: "active",
    keyId: "k",
    accessCt: Buffer.alloc(1),
    idCt: null,
    refreshable: true,
    tokenType: "Bearer",
    scope: "",
    accessExpiresAt: new Date(now.getTime() + 60_000),
    accessIssuedAt: now,
    idExpiresAt: null,
    lastUsedAt: now,
    version: 1,
    reauthReason: null,
    leaseOwner: null,
    leaseUntil: null,
    resources: null,
  };
}

const config = { enabled: true, maxEntries: 3, maxAgeMs: 60_000 };

describe("SessionCache", () => {
  it("hits only for the same user and session", () => {
    const cache = new SessionCache(config);
    cache.set(head("s1"), cache.ticket());
    expect(cache.get("u", "s1")?.head.id).toBe("s1");
    expect(cache.get("other", "s1")).toBeUndefined();
    expect(cache.get("u", "s2")).toBeUndefined();
  });

  it("drops an entry by the ref change notifications carry", () => {
    const cache = new SessionCache(config);
    cache.set(head("s1"), cache.ticket());
    cache.invalidateRef(sessionRef("s1"));
    expect(cache.get("u", "s1")).toBeUndefined();
  });

  it("refuses a fill from a read that began before the session was invalidated", () => {
    const cache = new SessionCache(config);
    const ticket = cache.ticket(); // read begins
    cache.invalidate("s1"); // revoked meanwhile on another replica
    expect(cache.set(head("s1"), ticket)).toBeUndefined();
    expect(cache.get("u", "s1")).toBeUndefined();
    // A read that began afterwards may fill.
    expect(cache.set(head("s1"), cache.ticket())).toBeDefined();
  });

  it("remembers at most MAX_TOMBSTONES invalidations, and still refuses a fill from a read older than the ones it forgot", () => {
    const cache = new SessionCache(config);
    const stale = cache.ticket(); // a slow read of s0 begins
    cache.invalidate("s0");
    for (let i = 1; i <= MAX_TOMBSTONES + 5; i++) cache.invalidate(`s${i}`);
    const { tombstones } = cache as unknown as { tombstones: Map<string, unknown> };
    expect(tombstones.size).toBe(MAX_TOMBSTONES);
    expect(tombstones.has(sessionRef("s0"))).toBe(false);
    // s0's tombstone was forgotten, but its read began before it: still refused.
    expect(cache.set(head("s0"), stale)).toBeUndefined();
    // A session invalidated again moves to the newest end and is not forgotten with the old ones.
    cache.invalidate("s1");
    for (let i = 0; i < MAX_TOMBSTONES - 1; i++) cache.invalidate(`t${i}`);
    expect(tombstones.has(sessionRef("s1"))).toBe(true);
    expect(tombstones.has(sessionRef("s2"))).toBe(false);
    // A read that began after all of them fills.
    expect(cache.set(head("s1"), cache.ticket())).toBeDefined();
  });

  it("keeps the invalidation queue bounded when one session is invalidated over and over", () => {
    const cache = new SessionCache(config);
    const before = cache.ticket();
    for (let i = 0; i < 5 * MAX_TOMBSTONES; i++) cache.invalidate("hot");
    const inner = cache as unknown as { tombstones: Map<string, unknown>; tombQueue: unknown[]; tombHead: number };
    expect(inner.tombQueue.length - inner.tombHead).toBeLessThanOrEqual(4 * MAX_TOMBSTONES);
    // Compacted once the part already swept is more than half of it.
    expect(inner.tombQueue.length).toBeLessThanOrEqual(8 * MAX_TOMBSTONES + 2048);
    expect(inner.tombstones.size).toBe(1);
    expect(cache.set(head("hot"), before)).toBeUndefined();
  });

  it("refuses fills from reads older than a flush, and is off while the channel is down", () => {
    const cache = new SessionCache(config);
    const early = cache.ticket();
    cache.flush();
    expect(cache.set(head("s1"), early)).toBeUndefined();
    cache.set(head("s2"), cache.ticket());
    cache.setOnline(false);
    expect(cache.active).toBe(false);
    expect(cache.get("u", "s2")).toBeUndefined();
    expect(cache.set(head("s3"), cache.ticket())).toBeUndefined();
    cache.setOnline(true);
    expect(cache.size).toBe(0);
    expect(cache.set(head("s3"), cache.ticket())).toBeDefined();
  });

  it("is bounded in size and age", () => {
    const cache = new SessionCache(config);
    for (const id of ["a", "b", "c"]) cache.set(head(id), cache.ticket());
    // Full: a session read for the first time is not stored, and pushes nothing out.
    expect(cache.set(head("d"), cache.ticket())).toBeUndefined();
    expect(cache.size).toBe(3);
    expect(cache.get("u", "a")).toBeDefined();
    expect(cache.stats.declined).toBe(1);
    // Read again: stored, in place of the oldest.
    expect(cache.set(head("d"), cache.ticket())?.head.id).toBe("d");
    expect(cache.size).toBe(3);
    expect(cache.get("u", "a")).toBeUndefined();
    expect(cache.get("u", "d")).toBeDefined();
    const aged = new SessionCache({ ...config, maxAgeMs: 0.000001 });
    aged.set(head("x"), aged.ticket());
    const until = Date.now() + 2;
    while (Date.now() < until) {
      // let a millisecond pass
    }
    expect(aged.get("u", "x")).toBeUndefined();
  });

  it("evicts the oldest set first, over many evictions with re-sets, invalidations and flushes between them", () => {
    const cache = new SessionCache({ ...config, maxEntries: 8 }, true, { admission: false });
    // The model: ids in the order they were last set, oldest first.
    let model: string[] = [];
    let seed = 7;
    const random = (n: number) => {
      seed = (seed * 1103515245 + 12345) % 2 ** 31;
      return seed % n;
    };
    const ids = Array.from({ length: 40 }, (_, i) => `s${i}`);
    for (let op = 0; op < 20_000; op++) {
      const id = ids[random(ids.length)]!;
      const what = random(100);
      if (what < 90) {
        expect(cache.set(head(id), cache.ticket())).toBeDefined();
        model = [...model.filter((m) => m !== id), id].slice(-8);
      } else if (what < 99) {
        cache.invalidate(id);
        model = model.filter((m) => m !== id);
      } else {
        cache.flush();
        model = [];
      }
      expect(cache.size).toBe(model.length);
      if (op % 500 === 0) expect(ids.filter((i) => cache.get("u", i) !== undefined).sort()).toEqual([...model].sort());
    }
    expect(ids.filter((i) => cache.get("u", i) !== undefined).sort()).toEqual([...model].sort());
  });

  it("once full, stores a session on its second read only, and never in place of one already stored", () => {
    const cache = new SessionCache({ ...config, maxEntries: 100 });
    for (let i = 0; i < 100; i++) expect(cache.set(head(`hot${i}`), cache.ticket())).toBeDefined();
    // A re-read of a stored session replaces it whatever the filter says.
    expect(cache.set({ ...head("hot5"), version: 2 }, cache.ticket())?.head.version).toBe(2);
    // 1,000 sessions read once each: none pushes out a stored one (a few pass the filter as seen: it is a Bloom filter).
    let stored = 0;
    for (let i = 0; i < 1000; i++) if (cache.set(head(`once${i}`), cache.ticket())) stored++;
    expect(stored).toBeLessThan(100);
    expect(cache.stats.declined).toBe(1000 - stored);
    expect(cache.size).toBe(100);
    // Read a second time soon after: stored.
    expect(cache.set(head("once999"), cache.ticket())).toBeDefined();
    expect(cache.get("u", "once999")).toBeDefined();
    // Storing it declined nothing more.
    expect(cache.stats.declined).toBe(1000 - stored);
    // The same session id for another user is another key: read for the first time.
    const before = cache.stats.declined;
    cache.set(head("once998", "other-user"), cache.ticket());
    expect(cache.stats.declined).toBe(before + 1);
  });

  it("once full, counts a fill its tombstone refused neither as declined nor as a first read", () => {
    const cache = new SessionCache(config);
    for (const id of ["a", "b", "c"]) cache.set(head(id), cache.ticket());
    const ticket = cache.ticket();
    cache.invalidate("d");
    expect(cache.set(head("d"), ticket)).toBeUndefined();
    expect(cache.stats.declined).toBe(0);
    // Its first read after the invalidation is the first the filter sees: declined; the next is stored.
    expect(cache.set(head("d"), cache.ticket())).toBeUndefined();
    expect(cache.stats.declined).toBe(1);
    expect(cache.set(head("d"), cache.ticket())).toBeDefined();
  });

  it("admission filter: remembers a key for at least one generation and forgets it after two", () => {
    const filter = new AdmissionFilter(1000);
    expect(filter.seen("k")).toBe(false);
    expect(filter.seen("k")).toBe(true);
    // 999 more keys fill the generation "k" began; it is still remembered in the next one.
    for (let i = 0; i < 999; i++) filter.seen(`a${i}`);
    expect(filter.seen("k")).toBe(true);
    // Two more generations of other keys: forgotten.
    for (let i = 0; i < 2000; i++) filter.seen(`b${i}`);
    expect(filter.seen("k")).toBe(false);
    // Keys never offered pass as seen rarely (about 8 bits a key, 2 hashes: about 5 % against a full generation).
    const full = new AdmissionFilter(10_000);
    for (let i = 0; i < 10_000; i++) full.seen(`key-${i}`); // the last one starts a new generation: the full one is the previous
    let passed = 0;
    for (let i = 0; i < 1000; i++) if (full.seen(`probe-${i}`)) passed++;
    expect(passed).toBeGreaterThan(0); // it is a Bloom filter, not a set
    expect(passed).toBeLessThan(100);
    // and every key of that generation is still remembered
    expect(Array.from({ length: 10_000 }, (_, i) => full.seen(`key-${i}`)).every(Boolean)).toBe(true);
  });

  it("stores the ciphertexts in buffers of their own, not in slices of the pool slab pg's bytea parser fills", () => {
    const parseBytea = pg.types.getTypeParser(17, "text") as (text: string) => Buffer; // bytea, as the reader gets it
    const access = parseBytea(`\\x${"ab".repeat(700)}`);
    const id = parseBytea(`\\x${"cd".repeat(120)}`);
    // The premise: a small bytea is a slice of a larger shared ArrayBuffer.
    expect(access.buffer.byteLength).toBeGreaterThan(access.byteLength);
    const cache = new SessionCache(config);
    const h = { ...head("s1"), accessCt: access, idCt: id };
    const entry = cache.set(h, cache.ticket())!;
    expect(entry.head).toBe(h); // in place: the caller's head is the cached one
    for (const [held, read] of [
      [entry.head.accessCt, access],
      [entry.head.idCt!, id],
    ] as const) {
      expect(held.buffer.byteLength).toBe(read.byteLength);
      expect(held.equals(read)).toBe(true);
    }
    // A buffer that owns its memory (SQLite's rows) is kept as it is.
    const own = Buffer.allocUnsafeSlow(16).fill(7);
    expect(cache.set({ ...head("s2"), accessCt: own }, cache.ticket())!.head.accessCt).toBe(own);
  });

  it("stores nothing when disabled", () => {
    const cache = new SessionCache({ ...config, enabled: false });
    expect(cache.set(head("s1"), cache.ticket())).toBeUndefined();
    expect(cache.get("u", "s1")).toBeUndefined();
  });
});
