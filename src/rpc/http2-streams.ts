import type { EventEmitter } from "node:events";
import type { Http2Session } from "node:http2";

/**
 * node:http2 keeps each connection's open streams in a `Map` from stream id
 * to stream, inside the session's private state. Under load a connection
 * opens and closes streams all the time, and with more than four open at once
 * V8 keeps copying that map's hash table into new ones; as the session lives
 * long, the copies are made in the old generation, and a replaced copy keeps
 * pointing at the streams it held until the next full collection. A
 * young-generation collection keeps whatever such a pointer reaches, so every
 * stream, with its call's objects, moved to the old generation and died there.
 * On a bare grpc-js server under h2load's 64 streams (4 connections × 16) that
 * was 2.5 KB a call, 71 full collections in 200,000 calls; with this table in
 * the map's place, 69 bytes and 15 (docs/performance.md, "Where the old
 * generation's garbage came from").
 *
 * `StreamTable` is a drop-in for that map: stream ids index an array of
 * slots, a slot is cleared when its stream closes, and the arrays are copied
 * only when they grow. It has every method of a `Map` keyed by number, so it
 * does not depend on which of them a Node version calls.
 */
export class StreamTable<V> {
  private ids: number[];
  private values_: Array<V | undefined>;
  private mask: number;
  private count = 0;
  /** Streams whose slot a longer-lived stream holds (a Watch open while ids went round the table). */
  private overflow: Map<number, V> | undefined;

  constructor(slots = INITIAL_SLOTS) {
    this.ids = new Array<number>(slots).fill(0);
    this.values_ = new Array<V | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
  }

  get size(): number {
    return this.count;
  }

  /** Client streams have odd ids and server pushes even ones, each counting up by 2: consecutive ids take consecutive slots. */
  private slot(id: number): number {
    return (id >>> 1) & this.mask;
  }

  get(id: number): V | undefined {
    const i = this.slot(id);
    return this.ids[i] === id ? this.values_[i] : this.overflow?.get(id);
  }

  has(id: number): boolean {
    return this.ids[this.slot(id)] === id || (this.overflow?.has(id) ?? false);
  }

  set(id: number, value: V): this {
    const i = this.slot(id);
    if (this.ids[i] === id) {
      this.values_[i] = value;
    } else if (this.overflow?.has(id)) {
      this.overflow.set(id, value);
    } else if (this.ids[i] === 0) {
      this.ids[i] = id;
      this.values_[i] = value;
      this.count++;
    } else if (this.count >= (this.mask + 1) / 2 && this.mask + 1 < MAX_SLOTS) {
      this.grow();
      this.set(id, value);
    } else {
      (this.overflow ??= new Map()).set(id, value);
      this.count++;
    }
    return this;
  }

  delete(id: number): boolean {
    const i = this.slot(id);
    if (this.ids[i] === id) {
      this.ids[i] = 0;
      this.values_[i] = undefined;
      this.count--;
      return true;
    }
    if (this.overflow?.delete(id)) {
      this.count--;
      return true;
    }
    return false;
  }

  clear(): void {
    this.ids.fill(0);
    this.values_.fill(undefined);
    this.overflow = undefined;
    this.count = 0;
  }

  /**
   * As `Map.prototype.forEach`: a stream deleted before its turn is not visited (closing a session destroys
   * streams as it goes). Should `fn` open so many streams that the table grows, the visit stops there.
   */
  forEach(fn: (value: V, id: number, table: this) => void, thisArg?: unknown): void {
    const { ids, values_ } = this;
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i]!;
      if (id !== 0 && this.ids === ids) fn.call(thisArg, values_[i] as V, id, this);
    }
    this.overflow?.forEach((value, id) => fn.call(thisArg, value, id, this));
  }

  *entries(): IterableIterator<[number, V]> {
    const all: Array<[number, V]> = [];
    this.forEach((value, id) => all.push([id, value]));
    yield* all;
  }

  *keys(): IterableIterator<number> {
    for (const [id] of this.entries()) yield id;
  }

  *values(): IterableIterator<V> {
    for (const [, value] of this.entries()) yield value;
  }

  [Symbol.iterator](): IterableIterator<[number, V]> {
    return this.entries();
  }

  private grow(): void {
    const { ids, values_ } = this;
    const slots = (this.mask + 1) * 2;
    this.ids = new Array<number>(slots).fill(0);
    this.values_ = new Array<V | undefined>(slots).fill(undefined);
    this.mask = slots - 1;
    this.count = this.overflow?.size ?? 0;
    for (let i = 0; i < ids.length; i++) if (ids[i] !== 0) this.set(ids[i]!, values_[i] as V);
  }
}

/**
 * A drop-in for the session's `pendingStreams` set. node:http2 puts every new stream in it and takes it out
 * again before the stream is handed over (a server stream stays there for no time at all), and each time the
 * emptied `Set` made V8 allocate a new table, in the old generation. At most a few streams are ever in it
 * together, so an array searched from the end does.
 */
export class PendingStreams<V> {
  private readonly items: V[] = [];

  get size(): number {
    return this.items.length;
  }

  add(item: V): this {
    if (!this.items.includes(item)) this.items.push(item);
    return this;
  }

  has(item: V): boolean {
    return this.items.includes(item);
  }

  delete(item: V): boolean {
    const i = this.items.lastIndexOf(item);
    if (i < 0) return false;
    const last = this.items.pop()!;
    if (i < this.items.length) this.items[i] = last;
    return true;
  }

  clear(): void {
    this.items.length = 0;
  }

  /** Over a copy, as destroying each stream takes it out. */
  forEach(fn: (value: V, again: V, set: this) => void, thisArg?: unknown): void {
    for (const item of [...this.items]) if (this.items.includes(item)) fn.call(thisArg, item, item, this);
  }

  *values(): IterableIterator<V> {
    yield* [...this.items];
  }

  keys(): IterableIterator<V> {
    return this.values();
  }

  *entries(): IterableIterator<[V, V]> {
    for (const item of [...this.items]) yield [item, item];
  }

  [Symbol.iterator](): IterableIterator<V> {
    return this.values();
  }
}

const INITIAL_SLOTS = 16;
/** 16 KiB of slots for a connection with this many streams open at once; past it, collisions go to a small Map. */
const MAX_SLOTS = 1024;

let adopted = 0;
let skipped = 0;

/** Sessions whose stream map was replaced, and those left as they were (an unknown shape: another Node version). */
export function streamTableCounts(): { adopted: number; skipped: number } {
  return { adopted, skipped };
}

/**
 * Puts a `StreamTable` in place of a new session's stream map, and a
 * `PendingStreams` in place of its pending set. Both sit in node:http2's
 * private state (a symbol-keyed `state` object with `streams` and
 * `pendingStreams`); when they are not found in that shape, or are not empty,
 * the session keeps its own and nothing else changes: it costs
 * garbage-collection time, never behaviour. Returns whether they were replaced.
 */
export function adoptStreamTable(session: Http2Session): boolean {
  const key = Object.getOwnPropertySymbols(session).find((s) => s.description === "state");
  const state = (key === undefined ? undefined : (session as unknown as Record<symbol, unknown>)[key]) as
    | { streams?: unknown; pendingStreams?: unknown }
    | undefined;
  if (state?.streams instanceof StreamTable) return true;
  if (!state || !isEmpty(state.streams, ["get", "set", "delete", "has", "forEach"]) || !isEmpty(state.pendingStreams, ["add", "delete", "has", "forEach"])) {
    skipped++;
    return false;
  }
  state.streams = new StreamTable();
  state.pendingStreams = new PendingStreams();
  adopted++;
  return true;
}

/** An empty collection with these methods. */
function isEmpty(value: unknown, methods: string[]): boolean {
  if (typeof value !== "object" || value === null) return false;
  const m = value as Record<string, unknown>;
  return m.size === 0 && methods.every((name) => typeof m[name] === "function");
}

/** Adopts the stream map of every session `server` (an HTTP/2 server) accepts from now on. */
export function adoptStreamTables(server: EventEmitter): void {
  server.on("session", adoptStreamTable);
}
