import { afterEach, describe, expect, it, vi } from "vitest";
import { LastUsedWriter, type LastUsedWriterOptions } from "../../src/sessions/last-used-writer.js";

/** A writer over a recording write; `flushMs` an hour unless given, so nothing is written by the timer unless a test moves the clock. */
function writer(options: Partial<LastUsedWriterOptions> = {}, write?: (ids: string[], times: Date[]) => Promise<number>) {
  const batches: Array<Array<[string, number]>> = [];
  const dropped: Array<{ count: number; err: unknown }> = [];
  const w = new LastUsedWriter(
    write ??
      (async (ids, times) => {
        batches.push(ids.map((id, i) => [id, times[i]!.getTime()]));
        return ids.length;
      }),
    { flushMs: 3_600_000, batchSize: 500, maxPending: 10_000, onDropped: (count, err) => dropped.push({ count, err }), ...options },
  );
  return { w, batches, dropped };
}

const at = (ms: number) => new Date(ms);

describe("LastUsedWriter", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("keeps the newest use per session and writes all of them in one batch, in id order", async () => {
    const { w, batches } = writer();
    w.record("b", at(2000));
    w.record("a", at(1000));
    w.record("b", at(1500)); // older than the one held: ignored
    w.record("a", at(3000));
    expect(batches).toEqual([]);
    expect(w.size).toBe(2);
    await w.flush();
    expect(batches).toEqual([
      [
        ["a", 3000],
        ["b", 2000],
      ],
    ]);
    expect(w.size).toBe(0);
  });

  it("writes about once per flush interval, not per use", async () => {
    vi.useFakeTimers();
    const { w, batches } = writer({ flushMs: 1000 });
    for (let i = 0; i < 50; i++) w.record(`s${i}`, at(i));
    await vi.advanceTimersByTimeAsync(999);
    expect(batches).toEqual([]);
    await vi.advanceTimersByTimeAsync(1);
    expect(batches.map((b) => b.length)).toEqual([50]);
    // Nothing pending: no further writes.
    await vi.advanceTimersByTimeAsync(5000);
    expect(batches).toHaveLength(1);
  });

  it("writes a full batch at once, in one statement of batchSize ids", () => {
    const { w, batches } = writer({ batchSize: 4 });
    for (let i = 0; i < 3; i++) w.record(`s${i}`, at(i));
    expect(batches).toEqual([]);
    w.record("s3", at(3));
    // Started synchronously: the 4th use sent the batch without waiting for the timer.
    expect(batches.map((b) => b.map(([id]) => id))).toEqual([["s0", "s1", "s2", "s3"]]);
  });

  it("drops a batch whose write fails, without retrying it", async () => {
    let fail = true;
    const written: string[][] = [];
    const { w, dropped } = writer({}, async (ids) => {
      if (fail) throw new Error("database unavailable");
      written.push(ids);
      return ids.length;
    });
    w.record("a", at(1));
    w.record("b", at(2));
    await w.flush();
    expect(dropped).toEqual([{ count: 2, err: new Error("database unavailable") }]);
    fail = false;
    w.record("c", at(3));
    await w.flush();
    expect(written).toEqual([["c"]]);
  });

  it("holds at most maxPending sessions while a write is slow, dropping uses of others until it is done", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const written: string[][] = [];
    const { w, dropped } = writer({ batchSize: 2, maxPending: 3 }, async (ids) => {
      await gate;
      written.push(ids);
      return ids.length;
    });
    w.record("a", at(1));
    w.record("b", at(2)); // a full batch: its write starts and waits at the gate
    for (const id of ["c", "d", "e", "f", "g"]) w.record(id, at(3));
    expect(w.size).toBe(3);
    w.record("c", at(9)); // a session already held still takes a newer use
    release();
    await w.flush();
    expect(written).toEqual([["a", "b"], ["c", "d"], ["e"]]);
    expect(dropped).toEqual([{ count: 2, err: undefined }]);
  });

  it("takes a use of a session whose write is under way as the same use", async () => {
    let release!: () => void;
    const gate = new Promise<void>((r) => (release = r));
    const written: string[][] = [];
    const { w } = writer({ batchSize: 2 }, async (ids) => {
      await gate;
      written.push(ids);
      return ids.length;
    });
    w.record("a", at(1));
    w.record("b", at(2)); // written now, waiting at the gate
    w.record("a", at(5)); // read again before that write committed: no second write
    w.record("c", at(5));
    release();
    await w.flush();
    expect(written).toEqual([["a", "b"], ["c"]]);
  });

  it("close writes what is pending and records nothing after", async () => {
    const { w, batches } = writer();
    w.record("a", at(1));
    await w.close();
    expect(batches).toEqual([[["a", 1]]]);
    w.record("b", at(2));
    expect(w.size).toBe(0);
  });
});
