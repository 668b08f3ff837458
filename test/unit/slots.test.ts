import { describe, expect, it } from "vitest";
import { SlotMap, SlotSet } from "../../src/util/slot-set.js";
import { prng } from "../helpers/prng.js";

describe("SlotSet", () => {
  it("keeps what was added and not yet deleted, reusing freed slots", () => {
    const set = new SlotSet<{ n: number }>();
    const a = { n: 1 };
    const b = { n: 2 };
    const c = { n: 3 };
    const sa = set.add(a);
    const sb = set.add(b);
    expect(set.size).toBe(2);
    expect(set.delete(sa, a)).toBe(true);
    expect(set.delete(sa, a)).toBe(false);
    // The freed slot is taken again, and a stale handle for it does not remove the new member.
    const sc = set.add(c);
    expect(sc).toBe(sa);
    expect(set.delete(sa, a)).toBe(false);
    expect(set.values()).toEqual([c, b]);
    expect(set.delete(sb, b)).toBe(true);
    expect(set.delete(sc, c)).toBe(true);
    expect(set.size).toBe(0);
    expect(set.values()).toEqual([]);
  });

  it("lets a caller delete members while it goes through values()", () => {
    const set = new SlotSet<string>();
    const slots = new Map(["a", "b", "c", "d"].map((m) => [m, set.add(m)]));
    for (const m of set.values()) set.delete(slots.get(m)!, m);
    expect(set.size).toBe(0);
  });

  it("agrees with a Set over a long random run of adds and deletes", () => {
    const { next } = prng(7);
    const set = new SlotSet<number>();
    const model = new Map<number, number>();
    for (let i = 0; i < 20_000; i++) {
      if (model.size > 0 && next() < 0.5) {
        const keys = [...model.keys()];
        const k = keys[Math.floor(next() * keys.length)]!;
        expect(set.delete(model.get(k)!, k)).toBe(true);
        model.delete(k);
      } else {
        model.set(i, set.add(i));
      }
      expect(set.size).toBe(model.size);
    }
    expect(set.values().sort((x, y) => x - y)).toEqual([...model.keys()].sort((x, y) => x - y));
  });
});

describe("SlotMap", () => {
  it("gets, replaces and deletes by key", () => {
    const map = new SlotMap<number>();
    expect(map.get("a")).toBeUndefined();
    map.set("a", 1).set("b", 2).set("a", 3);
    expect(map.size).toBe(2);
    expect(map.get("a")).toBe(3);
    expect(map.has("b")).toBe(true);
    expect(map.delete("b")).toBe(true);
    expect(map.delete("b")).toBe(false);
    expect(map.has("b")).toBe(false);
    expect(map.size).toBe(1);
  });

  it("finds every key after deletes in the middle of a probe run and after growing", () => {
    // A capacity of 8 with 300 keys: the table grows several times, and runs of colliding keys are common.
    const map = new SlotMap<string>(8);
    const keys = Array.from({ length: 300 }, (_, i) => `user-${i}\u0000session-${i * 7}`);
    for (const k of keys) map.set(k, k.toUpperCase());
    for (const k of keys.filter((_, i) => i % 3 === 0)) expect(map.delete(k)).toBe(true);
    for (const [i, k] of keys.entries()) expect(map.get(k)).toBe(i % 3 === 0 ? undefined : k.toUpperCase());
    expect(map.size).toBe(200);
  });

  it("agrees with a Map over a long random run of sets, gets and deletes", () => {
    const { next } = prng(11);
    const map = new SlotMap<number>(8);
    const model = new Map<string, number>();
    // Keys from a small space, so that the same key comes back, collides and is deleted often.
    const key = () => `k${Math.floor(next() * 500)}`;
    for (let i = 0; i < 50_000; i++) {
      const k = key();
      const r = next();
      if (r < 0.4) {
        map.set(k, i);
        model.set(k, i);
      } else if (r < 0.75) {
        expect(map.delete(k)).toBe(model.delete(k));
      } else {
        expect(map.get(k)).toBe(model.get(k));
      }
      expect(map.size).toBe(model.size);
    }
    for (const [k, v] of model) expect(map.get(k)).toBe(v);
  });
});
