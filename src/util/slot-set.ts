import { fnv1a } from "./hash.js";

/**
 * A set of short-lived members (the calls in flight, the responses being
 * written) kept by a long-lived owner, in an array of slots instead of a
 * JavaScript `Set`.
 *
 * Why not a `Set`: V8 stores a `Map` or `Set` in a hash table that it copies
 * into a new one as members come and go, and it allocates the new table in the
 * same generation as the old one. A `Set` that lives as long as the process
 * soon sits in the old generation, so every copy does too; a copy that has been
 * replaced is dead, but until the next full collection it still points at the
 * members it held, and a young-generation collection keeps whatever such a
 * pointer reaches. So each short-lived member, and all it refers to, outlives
 * its young collection, moves to the old generation, and dies there: more full
 * collections for nothing. Measured on node:http2's own per-connection stream
 * map, which has the same shape (docs/performance.md, "Where the old
 * generation's garbage came from").
 *
 * Here a member's slot is cleared when it is deleted, and the array is only
 * ever copied when it grows, which stops once it is as large as the most
 * members held at once.
 */
export class SlotSet<T> {
  private readonly slots: Array<T | undefined> = [];
  private readonly free: number[] = [];
  private count = 0;

  /** Adds `item` and returns its slot, which `delete` takes back. */
  add(item: T): number {
    const slot = this.free.length > 0 ? this.free.pop()! : this.slots.length;
    this.slots[slot] = item;
    this.count++;
    return slot;
  }

  /** Removes `item` from `slot`; false when it is not there (deleted already). */
  delete(slot: number, item: T): boolean {
    if (this.slots[slot] !== item) return false;
    this.slots[slot] = undefined;
    this.free.push(slot);
    this.count--;
    return true;
  }

  get size(): number {
    return this.count;
  }

  /** The members now, in a new array (so that the caller may delete while it goes through them). */
  values(): T[] {
    const out: T[] = [];
    for (const item of this.slots) if (item !== undefined) out.push(item);
    return out;
  }
}

/**
 * A map from string keys to short-lived values (the reads in flight), for the
 * same reason as `SlotSet`: open addressing over arrays that are copied only
 * when they grow, and a deleted entry's slot is cleared at once (entries after
 * it move back into the gap, so no marker is left behind).
 */
export class SlotMap<V> {
  private keys: Array<string | undefined>;
  private values: Array<V | undefined>;
  private hashes: Uint32Array;
  private mask: number;
  private count = 0;

  constructor(capacity = 64) {
    const slots = 2 ** Math.ceil(Math.log2(Math.max(capacity, 8)));
    this.keys = new Array<string | undefined>(slots).fill(undefined);
    this.values = new Array<V | undefined>(slots).fill(undefined);
    this.hashes = new Uint32Array(slots);
    this.mask = slots - 1;
  }

  get size(): number {
    return this.count;
  }

  get(key: string): V | undefined {
    const i = this.find(key, fnv1a(key));
    return i < 0 ? undefined : this.values[i];
  }

  has(key: string): boolean {
    return this.find(key, fnv1a(key)) >= 0;
  }

  set(key: string, value: V): this {
    const hash = fnv1a(key);
    const found = this.find(key, hash);
    if (found >= 0) {
      this.values[found] = value;
      return this;
    }
    if ((this.count + 1) * 2 > this.mask + 1) this.grow();
    this.place(key, value, hash);
    this.count++;
    return this;
  }

  delete(key: string): boolean {
    let hole = this.find(key, fnv1a(key));
    if (hole < 0) return false;
    this.clearSlot(hole);
    this.count--;
    // Backward shift: an entry after the hole moves into it unless its home slot lies between them.
    for (let j = (hole + 1) & this.mask; this.keys[j] !== undefined; j = (j + 1) & this.mask) {
      const home = this.hashes[j]! & this.mask;
      const stays = hole < j ? home > hole && home <= j : home > hole || home <= j;
      if (stays) continue;
      this.keys[hole] = this.keys[j];
      this.values[hole] = this.values[j];
      this.hashes[hole] = this.hashes[j]!;
      this.clearSlot(j);
      hole = j;
    }
    return true;
  }

  private find(key: string, hash: number): number {
    for (let i = hash & this.mask; ; i = (i + 1) & this.mask) {
      const k = this.keys[i];
      if (k === undefined) return -1;
      if (k === key) return i;
    }
  }

  private place(key: string, value: V, hash: number): void {
    let i = hash & this.mask;
    while (this.keys[i] !== undefined) i = (i + 1) & this.mask;
    this.keys[i] = key;
    this.values[i] = value;
    this.hashes[i] = hash;
  }

  private clearSlot(i: number): void {
    this.keys[i] = undefined;
    this.values[i] = undefined;
  }

  private grow(): void {
    const { keys, values, hashes } = this;
    const slots = (this.mask + 1) * 2;
    this.keys = new Array<string | undefined>(slots).fill(undefined);
    this.values = new Array<V | undefined>(slots).fill(undefined);
    this.hashes = new Uint32Array(slots);
    this.mask = slots - 1;
    for (let i = 0; i < keys.length; i++) if (keys[i] !== undefined) this.place(keys[i]!, values[i] as V, hashes[i]!);
  }
}
