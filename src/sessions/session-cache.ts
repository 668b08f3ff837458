import type { CacheConfig } from "../config.js";
import type { SessionHead } from "../db/session-entity.js";
import type { AudienceToken } from "../refresh/audience.js";
import { sessionRef } from "../logger.js";
import { fnv1a } from "../util/hash.js";
import type { TokenAnswer } from "./session-service.js";


/** A cached session; its decrypted tokens are filled in on first use. */
export interface CacheEntry {
  head: SessionHead;
  ref: string;
  storedAt: number;
  /** Decrypted tokens, filled on first use (AES-GCM only when needed). */
  access?: string;
  id?: string;
  /**
   * The answers built from this entry, by kind, built once per cached session version (an entry is
   * replaced, never changed, when its session changes): GetToken's hot path hands out the same object.
   */
  answers?: { access?: TokenAnswer; id?: TokenAnswer };
  /** Audience tokens (RFC 8707) obtained through this replica, by resource; dropped with the entry. */
  audiences?: Map<string, AudienceToken>;
}

/**
 * `bytes` in a buffer of its own. pg decodes a bytea with `Buffer.from(hex, "hex")`, which puts values under
 * 4 KiB in a slice of Node's shared 8 KiB pool slab: an entry that kept such a slice would keep the whole slab,
 * and with the sessions read at random the cache kept about three times the bytes it holds (the random-mix
 * benchmark's 10,000 entries: 63 MB of Buffers; docs/performance.md, "Memory"). A buffer that already owns its
 * memory (SQLite's) is kept as it is.
 */
function ownBytes(bytes: Buffer): Buffer {
  if (bytes.byteOffset === 0 && bytes.byteLength === bytes.buffer.byteLength) return bytes;
  const own = Buffer.allocUnsafeSlow(bytes.byteLength);
  bytes.copy(own);
  return own;
}

/** A remembered invalidation: reads that began before `seq` may not fill the cache with `ref`'s session. */
interface Tombstone {
  ref: string;
  seq: number;
  at: number;
}

/** Recent invalidations are remembered this long, to refuse late fills from reads that began earlier. */
const TOMBSTONE_MS = 60_000;

/**
 * At most this many are remembered. Past it the oldest is forgotten early,
 * and reads that began before it may not fill the cache at all (as after a
 * flush): at 640 invalidations a second (3 replicas' refreshes at 50,000
 * sessions) that refuses only reads older than about 15 s.
 */
export const MAX_TOMBSTONES = 10_000;

/**
 * Which sessions a full cache takes in: only those read before, recently. A
 * session read once and not again soon (most of them, when calls spread over
 * many more sessions than the cache holds) is not stored, so it does not push
 * out an entry that would have been hit, and its entry does not live long
 * enough to be moved to V8's old generation only to die there (with 100,000
 * sessions read at random, those entries made the full collections that held
 * the service to 0.28× the bare server; see docs/performance.md). A session
 * read twice is stored on its second read, however full the cache.
 *
 * The keys offered are remembered in a Bloom filter (two hashes derived from
 * one FNV-1a hash, 8 to 16 bits per key as the size rounds up to a power of
 * two), not as strings: no object per key. It has two generations of
 * `capacity` keys each; a key is remembered until two generations have passed.
 * A key not seen before passes as seen with a chance of about 2–5 % per full
 * generation checked, so up to about 10 % while both are full (2.5 % measured
 * at 10,000 against one full generation).
 */
export class AdmissionFilter {
  /** Made on first use: a cache that never fills never needs them (2 × 16 KiB at 10,000 entries, 2 × 16 MiB at 10,000,000). */
  private current: Uint32Array | undefined;
  private previous: Uint32Array | undefined;
  private readonly mask: number;
  private added = 0;

  constructor(private readonly capacity: number) {
    let bits = 1024;
    while (bits < capacity * 8) bits *= 2;
    this.mask = bits - 1;
  }

  /** True if `key` was offered within the last two generations (or passes as such); else remembers it. */
  seen(key: string): boolean {
    this.current ??= new Uint32Array((this.mask + 1) / 32);
    this.previous ??= new Uint32Array((this.mask + 1) / 32);
    const h = fnv1a(key);
    const a = mix(h) & this.mask;
    const b = mix(h + 0x9e3779b9) & this.mask;
    if ((has(this.current, a) && has(this.current, b)) || (has(this.previous, a) && has(this.previous, b))) return true;
    this.current[a >>> 5]! |= 1 << (a & 31);
    this.current[b >>> 5]! |= 1 << (b & 31);
    if (++this.added >= this.capacity) {
      [this.previous, this.current] = [this.current, this.previous];
      this.current.fill(0);
      this.added = 0;
    }
    return false;
  }
}

/** MurmurHash3's finalizer: every bit of `h` reaches the low bits that index the filter. */
function mix(h: number): number {
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  return (h ^ (h >>> 16)) >>> 0;
}

function has(bits: Uint32Array, i: number): boolean {
  return (bits[i >>> 5]! & (1 << (i & 31))) !== 0;
}

/**
 * Per-replica cache of session heads and their decrypted tokens, for the
 * GetToken hot path. Keyed by user and session id together, so asking with the
 * wrong user never hits (and takes the same path as an unknown session).
 *
 * Correctness rests on invalidation: every change to a session (refresh,
 * reauth, revoke, key rotation) is announced to all replicas (PostgreSQL
 * NOTIFY) and drops the entry here. While that channel is down the cache is
 * off and empty. A read that began before an invalidation of its session may
 * not fill the cache (tombstones), so a revoked session cannot come back
 * through a slow read. Entries also expire with `maxAgeMs` and are bounded in
 * number.
 */
export class SessionCache {
  private readonly entries = new Map<string, CacheEntry>();
  private readonly byRef = new Map<string, string>();
  private readonly tombstones = new Map<string, Tombstone>();
  /**
   * The tombstones in the order they were made (a ref made again is in it twice; the map holds the newest),
   * from `tombHead` on: the sweep takes from the front without scanning the map, whose iteration would
   * step over every slot earlier deletions left empty.
   */
  private tombQueue: Tombstone[] = [];
  private tombHead = 0;
  /**
   * Where eviction finds the oldest entry: one live iterator, kept while sets evict. A fresh
   * `entries.values().next()` scans every slot that earlier evictions emptied at the front of the
   * map's table (thousands, until V8 compacts it): about 5 µs an eviction at 10,000 entries, paid by
   * every cache miss once the cache is full. Everything before this cursor has been evicted, so its
   * next entry is the oldest. Dropped when a set evicts nothing, so that it never holds on to tables
   * the map has outgrown.
   */
  private evictCursor: MapIterator<CacheEntry> | undefined;
  private seq = 0;
  private flushedSeq = 0;
  private online: boolean;
  private readonly admission: AdmissionFilter | undefined;
  /** `declined`: reads not stored because the cache was full and their session had not been read recently. */
  readonly stats = { hits: 0, misses: 0, invalidations: 0, declined: 0 };

  /** `admission: false` stores every read, full or not (the eviction order's own tests). */
  constructor(
    private readonly config: CacheConfig,
    online = true,
    options: { admission?: boolean } = {},
  ) {
    this.online = online;
    this.admission = options.admission === false ? undefined : new AdmissionFilter(config.maxEntries);
  }

  get active(): boolean {
    return this.config.enabled && this.online;
  }

  get size(): number {
    return this.entries.size;
  }

  private key(userId: string, sessionId: string): string {
    return `${userId}\u0000${sessionId}`;
  }

  /** A ticket to pass to `set` after reading the database: it remembers when the read began. */
  ticket(): number {
    return this.seq;
  }

  get(userId: string, sessionId: string): CacheEntry | undefined {
    if (!this.active) return undefined;
    const entry = this.entries.get(this.key(userId, sessionId));
    if (!entry) {
      this.stats.misses++;
      return undefined;
    }
    if (Date.now() - entry.storedAt > this.config.maxAgeMs) {
      this.drop(entry);
      this.stats.misses++;
      return undefined;
    }
    this.stats.hits++;
    return entry;
  }

  /**
   * Stores a head read from the database, unless its session was invalidated
   * since `ticket` was taken (before the read), or the cache is full and the
   * session was not read recently (AdmissionFilter). Returns the entry, if stored.
   */
  set(head: SessionHead, ticket: number): CacheEntry | undefined {
    if (!this.active || ticket < this.flushedSeq) return undefined;
    // The ref is a hash: made here only when some tombstone could match it, else when the entry is stored.
    let ref = this.tombstones.size > 0 ? sessionRef(head.id) : undefined;
    const tomb = ref === undefined ? undefined : this.tombstones.get(ref);
    if (tomb && tomb.seq > ticket) return undefined;
    // After the tombstones: a read refused for its age is neither counted as declined nor remembered as seen.
    const key = this.key(head.userId, head.id);
    const old = this.entries.get(key);
    if (!old && this.admission && this.entries.size >= this.config.maxEntries && !this.admission.seen(key)) {
      this.stats.declined++;
      return undefined;
    }
    if (old) this.entries.delete(key);
    // In place: the caller goes on with the same head (its use is recorded on it).
    head.accessCt = ownBytes(head.accessCt);
    if (head.idCt) head.idCt = ownBytes(head.idCt);
    ref ??= sessionRef(head.id);
    const entry: CacheEntry = { head, ref, storedAt: Date.now() };
    this.entries.set(key, entry);
    this.byRef.set(ref, key);
    if (this.entries.size <= this.config.maxEntries) this.evictCursor = undefined;
    while (this.entries.size > this.config.maxEntries) this.evictOldest();
    return entry;
  }

  private evictOldest(): void {
    let next = this.evictCursor?.next();
    if (next === undefined || next.done) {
      this.evictCursor = this.entries.values();
      next = this.evictCursor.next();
    }
    if (!next.done) this.drop(next.value);
  }

  private drop(entry: CacheEntry): void {
    this.entries.delete(this.key(entry.head.userId, entry.head.id));
    this.byRef.delete(entry.ref);
  }

  /** Drops a session by the short ref that change notifications carry. */
  invalidateRef(ref: string): void {
    this.seq++;
    this.stats.invalidations++;
    const now = Date.now();
    const tomb: Tombstone = { ref, seq: this.seq, at: now };
    this.tombstones.set(ref, tomb);
    this.tombQueue.push(tomb);
    const key = this.byRef.get(ref);
    if (key) {
      const entry = this.entries.get(key);
      if (entry) this.drop(entry);
    }
    // From the oldest: an invalidation costs O(1) amortized however many are remembered.
    while (this.tombHead < this.tombQueue.length) {
      const t = this.tombQueue[this.tombHead]!;
      const young = now - t.at <= TOMBSTONE_MS;
      // The queue is bounded too: a session invalidated over and over leaves a copy each time.
      if (young && this.tombstones.size <= MAX_TOMBSTONES && this.tombQueue.length - this.tombHead <= 4 * MAX_TOMBSTONES) break;
      this.tombHead++;
      // A ref invalidated again since has a newer tombstone in the map: that one stays.
      if (this.tombstones.get(t.ref) !== t) continue;
      this.tombstones.delete(t.ref);
      // Forgotten before its time: a read that began before it may not fill anything.
      if (young) this.flushedSeq = Math.max(this.flushedSeq, t.seq);
    }
    if (this.tombHead > 1024 && this.tombHead * 2 > this.tombQueue.length) {
      this.tombQueue = this.tombQueue.slice(this.tombHead);
      this.tombHead = 0;
    }
  }

  invalidate(sessionId: string): void {
    this.invalidateRef(sessionRef(sessionId));
  }

  /** Drops everything; reads that began before may not fill. */
  flush(): void {
    this.seq++;
    this.flushedSeq = this.seq;
    this.evictCursor = undefined;
    this.entries.clear();
    this.byRef.clear();
  }

  /** Follows the invalidation channel: off (and empty) while it is down, flushed when it returns. */
  setOnline(online: boolean): void {
    this.flush();
    this.online = online;
  }
}
