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
