import { afterEach, describe, expect, it } from "vitest";
import { TurnGate } from "../../src/util/turn-gate.js";
import { perTurn, turnCounter } from "../helpers/turns.js";

describe("TurnGate", () => {
  let counter: ReturnType<typeof turnCounter> | undefined;
  afterEach(() => counter?.stop());

  it("lets waiters woken together go on a few per turn, in the order they came", async () => {
    const gate = new TurnGate(4);
    let release!: (v: string) => void;
    const shared = new Promise<string>((resolve) => (release = resolve));
    counter = turnCounter();
    const order: number[] = [];
    const turnOf: number[] = [];
    const waiters = Array.from({ length: 10 }, (_, i) =>
      gate.through(shared).then((v) => {
        order.push(i);
        turnOf[i] = counter!.now();
        return v;
      }),
    );
    release("token");
    expect(await Promise.all(waiters)).toEqual(Array.from({ length: 10 }, () => "token"));
    expect(order).toEqual([0, 1, 2, 3, 4, 5, 6, 7, 8, 9]);
    // 4 in the turn the shared work settled in, then 4, then 2: three turns.
    expect(perTurn(turnOf)).toEqual([4, 4, 2]);
    // ...and the order came with the turns.
    expect([...turnOf].sort((a, b) => a - b)).toEqual(turnOf);
    expect(gate.held).toBe(0);
  });

  it("keeps the order over thousands of waiters, 16 a turn", async () => {
    const gate = new TurnGate(16);
    counter = turnCounter();
    const order: number[] = [];
    const turnOf: number[] = [];
    await Promise.all(
      Array.from({ length: 5000 }, (_, i) =>
        gate.through(Promise.resolve(i)).then((v) => {
          order.push(v);
          turnOf.push(counter!.now());
        }),
      ),
    );
    expect(order).toEqual(Array.from({ length: 5000 }, (_, i) => i));
    expect(perTurn(turnOf)).toEqual([...Array.from({ length: 312 }, () => 16), 8]);
    expect(gate.held).toBe(0);
  });

  it("passes a rejection through the gate, in its turn", async () => {
    const gate = new TurnGate(1);
    counter = turnCounter();
    const firstAt: number[] = [];
    const first = gate.through(Promise.resolve(1)).then((v) => (firstAt.push(counter!.now()), v));
    const failed = gate.through(Promise.reject(new Error("provider down")));
    const failedAt = failed.then(
      () => NaN,
      () => counter!.now(),
    );
    await expect(first).resolves.toBe(1);
    // The first took this turn's one place, so the rejection waits for the next.
    expect(gate.held).toBe(1);
    await expect(failed).rejects.toThrow("provider down");
    expect(await failedAt).toBeGreaterThan(firstAt[0]!);
  });

  it("lets a lone waiter go on in the same turn", async () => {
    const gate = new TurnGate(16);
    counter = turnCounter();
    const before = counter.now();
    await gate.through(Promise.resolve("x"));
    expect(counter.now()).toBe(before);
    expect(gate.held).toBe(0);
  });

  it("stops scheduling turns once no one waits", async () => {
    const gate = new TurnGate(2);
    await Promise.all(Array.from({ length: 5 }, () => gate.through(Promise.resolve(0))));
    // Two turns pass with no waiter; an idle gate schedules nothing that would keep the process busy.
    let scheduled = 0;
    const original = globalThis.setImmediate;
    await new Promise((resolve) => original(() => original(resolve)));
    globalThis.setImmediate = ((fn: () => void) => {
      scheduled++;
      return original(fn);
    }) as typeof setImmediate;
    try {
      await new Promise((resolve) => original(() => original(resolve)));
    } finally {
      globalThis.setImmediate = original;
    }
    expect(scheduled).toBe(0);
  });

  it("refuses a turn size that is not a positive integer", () => {
    expect(() => new TurnGate(0)).toThrow(RangeError);
    expect(() => new TurnGate(1.5)).toThrow(RangeError);
  });
});
