import { describe, expect, it } from "vitest";
import type { ChangeChannel } from "../../src/db/pg-channel.js";
import { sessionRef } from "../../src/logger.js";
import { SessionWaiter } from "../../src/refresh/waiter.js";

/** A channel whose messages the test delivers itself, as another replica's NOTIFY would arrive. */
function testChannel() {
  const listeners: Array<(message: string) => void> = [];
  const channel: ChangeChannel = {
    publish: () => Promise.resolve(),
    onMessage: (l) => void listeners.push(l),
    onStateChange: () => undefined,
    connected: true,
    close: () => Promise.resolve(),
  };
  return { channel, deliver: (message: string) => listeners.forEach((l) => l(message)) };
}

/** A delay no passing test waits out (a wait that returns true was woken); one that breaks fails on false after it. */
const LONG = 5_000;

describe("SessionWaiter watches", () => {
  it("keeps a change announced between two waits: the next wait returns at once, woken", async () => {
    const waiter = new SessionWaiter();
    const watch = waiter.watch("sess-1");
    // Between waits (the loop reads the row, tries the lease): nobody is sleeping when the change comes.
    await waiter.notify("sess-1");
    expect(await watch.next(LONG)).toBe(true);
    // Taken once: with nothing new, the next wait runs out.
    expect(await watch.next(5)).toBe(false);
    watch.close();
  });

  it("keeps another replica's announcement arriving between waits, and wakes a wait in progress", async () => {
    const { channel, deliver } = testChannel();
    const waiter = new SessionWaiter(channel);
    const watch = waiter.watch("sess-2");
    deliver(`changed:${sessionRef("sess-2")}`);
    expect(await watch.next(LONG)).toBe(true);
    const waiting = watch.next(LONG);
    deliver(`changed:${sessionRef("sess-2")}`);
    expect(await waiting).toBe(true);
    watch.close();
  });

  it("is not woken by another session's change, a flush or a provider change", async () => {
    const { channel, deliver } = testChannel();
    const waiter = new SessionWaiter(channel);
    const watch = waiter.watch("sess-3");
    await waiter.notify("sess-other");
    deliver(`changed:${sessionRef("sess-other")}`);
    deliver("flush");
    deliver("providers");
    expect(await watch.next(5)).toBe(false);
    watch.close();
  });

  it("wakes every watch of the session, and forgets the session once its last watch closes", async () => {
    const waiter = new SessionWaiter();
    const a = waiter.watch("sess-4");
    const b = waiter.watch("sess-4");
    expect(waiter.watchedCount).toBe(1);
    const waitingA = a.next(LONG);
    await waiter.notify("sess-4");
    expect(await waitingA).toBe(true);
    expect(await b.next(LONG)).toBe(true);
    a.close();
    expect(waiter.watchedCount).toBe(1);
    // A closed watch hears nothing; the open one still does.
    await waiter.notify("sess-4");
    expect(await a.next(5)).toBe(false);
    expect(await b.next(LONG)).toBe(true);
    b.close();
    b.close();
    expect(waiter.watchedCount).toBe(0);
  });

  it("stops telling a listener of changes once it unsubscribed", async () => {
    const waiter = new SessionWaiter();
    const heard: string[] = [];
    const unsubscribe = waiter.subscribe({ changed: (ref) => heard.push(ref), flush: () => undefined });
    await waiter.notify("sess-8");
    unsubscribe();
    await waiter.notify("sess-9");
    expect(heard).toEqual([sessionRef("sess-8")]);
  });

  it("returns at once, not woken, when asked to wait after it was closed", async () => {
    const waiter = new SessionWaiter();
    const watch = waiter.watch("sess-7");
    watch.close();
    await waiter.notify("sess-7");
    expect(await watch.next(LONG)).toBe(false);
    expect(waiter.watchedCount).toBe(0);
  });

  it("ends a wait in progress when the watch or the waiter closes", async () => {
    const waiter = new SessionWaiter();
    const watch = waiter.watch("sess-5");
    const waiting = watch.next(LONG);
    watch.close();
    expect(await waiting).toBe(true);
    const other = waiter.watch("sess-6");
    const stillWaiting = other.next(LONG);
    await waiter.close();
    expect(await stillWaiting).toBe(true);
    other.close();
    expect(waiter.watchedCount).toBe(0);
  });
});
