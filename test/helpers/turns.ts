import { vi } from "vitest";
import { TurnGate } from "../../src/util/turn-gate.js";

/** Counts event-loop turns (one setImmediate each) until stopped; `now()` is the current turn's number. */
export function turnCounter(): { now: () => number; stop: () => void } {
  let turn = 0;
  let running = true;
  const tick = () => {
    if (!running) return;
    turn++;
    setImmediate(tick);
  };
  setImmediate(tick);
  return { now: () => turn, stop: () => void (running = false) };
}

/** How many of `turns` fall in each turn, in the order the turns came. */
export function perTurn(turns: number[]): number[] {
  const counts = new Map<number, number>();
  for (const t of turns) counts.set(t, (counts.get(t) ?? 0) + 1);
  return [...counts.keys()].sort((a, b) => a - b).map((t) => counts.get(t)!);
}

/**
 * Records, for every waiter any TurnGate lets go on while `work` runs, the event-loop turn it went on in (see
 * turnCounter), then puts the gate back as it was.
 */
export async function gatedTurns<T>(work: () => Promise<T>): Promise<{ result: T; turns: number[] }> {
  const counter = turnCounter();
  const turns: number[] = [];
  const pass = TurnGate.prototype.pass;
  const spy = vi.spyOn(TurnGate.prototype, "pass").mockImplementation(function (this: TurnGate) {
    return pass.call(this).then(() => void turns.push(counter.now()));
  });
  try {
    return { result: await work(), turns };
  } finally {
    spy.mockRestore();
    counter.stop();
  }
}
