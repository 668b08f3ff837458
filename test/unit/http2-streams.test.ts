import { once } from "node:events";
import http2 from "node:http2";
import type { AddressInfo } from "node:net";
import { afterEach, describe, expect, it } from "vitest";
import { adoptStreamTables, PendingStreams, StreamTable, streamTableCounts } from "../../src/rpc/http2-streams.js";

describe("StreamTable", () => {
  it("agrees with a Map while streams open and close, with long-lived ones among them", () => {
    const table = new StreamTable<string>();
    const model = new Map<number, string>();
    const open: number[] = [];
    let id = 1;
    // Up to 40 short streams at once, and every 500th stream stays open to the end: ids go round the
    // table many times, so new streams land on slots that long-lived ones hold, and the table grows.
    for (let step = 0; step < 30_000; step++) {
      if (open.length < 40 && (step % 3 !== 0 || open.length === 0)) {
        const value = `stream-${id}`;
        table.set(id, value);
        model.set(id, value);
        if (id % 1000 !== 1) open.push(id);
        id += 2;
      } else {
        const victim = open.splice(step % open.length, 1)[0]!;
        expect(table.delete(victim)).toBe(true);
        model.delete(victim);
        expect(table.delete(victim)).toBe(false);
      }
      expect(table.size).toBe(model.size);
    }
    for (const [k, v] of model) expect(table.get(k)).toBe(v);
    expect(table.get(id + 2)).toBeUndefined();
    expect(table.has(id + 2)).toBe(false);
    const seen = new Map<number, string>();
    table.forEach((v, k) => seen.set(k, v));
    expect(seen).toEqual(model);
    expect(new Map(table.entries())).toEqual(model);
    expect([...table.keys()].sort((a, b) => a - b)).toEqual([...model.keys()].sort((a, b) => a - b));
  });

  it("does not visit a stream deleted during forEach, as a Map does not", () => {
    const table = new StreamTable<number>();
    for (const id of [1, 3, 5, 7]) table.set(id, id);
    const visited: number[] = [];
    table.forEach((v) => {
      visited.push(v);
      table.delete(v);
      if (v === 1) table.delete(5);
    });
    expect(visited).toEqual([1, 3, 7]);
    expect(table.size).toBe(0);
  });

  it("replaces a value set twice and empties on clear", () => {
    const table = new StreamTable<string>();
    table.set(9, "a").set(9, "b");
    expect(table.size).toBe(1);
    expect(table.get(9)).toBe("b");
    table.clear();
    expect(table.size).toBe(0);
    expect(table.get(9)).toBeUndefined();
  });
});

describe("PendingStreams", () => {
  it("holds each stream once, and forEach survives deletions", () => {
    const set = new PendingStreams<string>();
    set.add("a").add("b").add("a").add("c");
    expect(set.size).toBe(3);
    expect(set.has("b")).toBe(true);
    expect(set.delete("b")).toBe(true);
    expect(set.delete("b")).toBe(false);
    expect([...set].sort()).toEqual(["a", "c"]);
    const visited: string[] = [];
    set.forEach((v) => {
      visited.push(v);
      set.delete("c");
      set.delete(v);
    });
    expect(visited).toEqual(["a"]);
    expect(set.size).toBe(0);
  });
});

describe("adoptStreamTables on a real node:http2 server", () => {
  const closers: Array<() => Promise<void> | void> = [];
  afterEach(async () => {
    for (const c of closers.splice(0).reverse()) await c();
  });

  async function server() {
    const streams: http2.ServerHttp2Stream[] = [];
    const s = http2.createServer();
    adoptStreamTables(s);
    const sessions: http2.ServerHttp2Session[] = [];
    s.on("session", (session) => sessions.push(session));
    s.on("stream", (stream, headers) => {
      streams.push(stream);
      // "/hold" streams stay open until the client goes; the others answer with their own path at once.
      if (headers[":path"] === "/hold") return stream.respond({ ":status": 200 });
      stream.respond({ ":status": 200 });
      stream.end(String(headers[":path"]));
    });
    s.listen(0, "127.0.0.1");
    await once(s, "listening");
    closers.push(() => new Promise<void>((r) => s.close(() => r())));
    const client = http2.connect(`http://127.0.0.1:${(s.address() as AddressInfo).port}`);
    closers.push(() => void client.destroy());
    return { client, sessions, streams };
  }

  function request(client: http2.ClientHttp2Session, path: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const req = client.request({ ":path": path });
      let body = "";
      req.setEncoding("utf8").on("data", (d: string) => (body += d));
      req.on("end", () => resolve(body));
      req.on("error", reject);
      req.end();
    });
  }

  it("replaces the session's stream map, and every stream is answered and then let go", async () => {
    const before = streamTableCounts();
    const { client, sessions } = await server();
    // Two streams that stay open while 3,000 others come and go, 100 at a time: the ids go round
    // the table, land on the held streams' slots and make it grow.
    const held = [client.request({ ":path": "/hold" }), client.request({ ":path": "/hold" })];
    for (const h of held) h.on("error", () => undefined).end();
    await Promise.all(held.map((h) => once(h, "response")));
    for (let batch = 0; batch < 30; batch++) {
      const paths = Array.from({ length: 100 }, (_, i) => `/s/${batch}/${i}`);
      expect(await Promise.all(paths.map((p) => request(client, p)))).toEqual(paths);
    }
    expect(streamTableCounts().adopted).toBe(before.adopted + 1);
    expect(streamTableCounts().skipped).toBe(before.skipped);
    const session = sessions[0]!;
    const state = (session as unknown as Record<symbol, { streams: unknown; pendingStreams: unknown }>)[
      Object.getOwnPropertySymbols(session).find((s) => s.description === "state")!
    ]!;
    expect(state.streams).toBeInstanceOf(StreamTable);
    expect(state.pendingStreams).toBeInstanceOf(PendingStreams);
    // Only the two held streams are still in the table: the others were let go as they closed.
    await new Promise((r) => setImmediate(r));
    expect((state.streams as StreamTable<unknown>).size).toBe(2);
  });

  it("closes the streams still open when the session is destroyed (node:http2 goes through the table)", async () => {
    const { client, sessions, streams } = await server();
    const held = Array.from({ length: 20 }, () => client.request({ ":path": "/hold" }));
    for (const h of held) h.on("error", () => undefined).end();
    await Promise.all(held.map((h) => once(h, "response")));
    const closed = Promise.all(streams.map((s) => once(s, "close")));
    sessions[0]!.destroy();
    await closed;
    expect(streams.every((s) => s.destroyed)).toBe(true);
  });
});
