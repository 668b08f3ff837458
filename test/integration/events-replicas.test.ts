import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { toJsonString } from "@bufbuild/protobuf";
import { EventSchema, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";
import { watchConnect, watchGrpcJs, type Watch } from "../helpers/watch.js";

/**
 * Three replicas on one PostgreSQL. The outbox poll is set to an hour, so a
 * watcher on one replica learns of another's events through NOTIFY alone.
 */
describe("events across three replicas on PostgreSQL", () => {
  let provider: TestProvider;
  const replicas: TestService[] = [];
  /** Every replica started, also one closed since: their logs are read at the end. */
  const started: TestService[] = [];
  const clients: Array<Client<typeof TokenService>> = [];
  const watches: Watch[] = [];
  const watch = (w: Watch) => (watches.push(w), w);

  const secrets: string[] = [];
  const sessionIds: string[] = [];

  async function store(via: number, user: string): Promise<string> {
    const set = await provider.login(user);
    secrets.push(set.access_token, set.refresh_token);
    const { sessionId } = await clients[via]!.storeSession({ userId: user, provider: "corp", tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 300n } });
    sessionIds.push(sessionId);
    return sessionId;
  }

  beforeAll(async () => {
    provider = await startTestProvider();
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("events");
    for (const id of ["r1", "r2", "r3"]) {
      const svc = await startService({ dialect: "postgresql", databaseUrl, keys, provider, overrides: { replicaId: id }, yaml: { events: { poll_interval_seconds: 3600 }, shutdown_grace_seconds: 1 } });
      replicas.push(svc);
      started.push(svc);
      clients.push(createClient(TokenService, createGrpcTransport({ baseUrl: svc.url })));
    }
  });
  afterAll(async () => {
    for (const w of watches) w.close();
    await Promise.all(watches.map((w) => w.ended));
    await Promise.all(replicas.map((r) => r.close()));
    await provider?.close();
  });

  it("an event made on any replica reaches a watcher on every other, in one cursor order", async () => {
    const watchers = [watchGrpcJs(replicas[0]!.url, {}), watchConnect(replicas[1]!.httpUrl, {}), watchConnect(replicas[2]!.httpUrl, {})].map(watch);
    await Promise.all(watchers.map((w) => w.started()));
    const ids = [await store(0, "made-on-1"), await store(1, "made-on-2"), await store(2, "made-on-3")];
    for (const w of watchers) {
      const got = await w.until((ev) => ev.length >= 3);
      expect(got.map((e) => [e.userId, e.sessionId])).toEqual([
        ["made-on-1", ids[0]],
        ["made-on-2", ids[1]],
        ["made-on-3", ids[2]],
      ]);
    }
    expect(watchers[1]!.events().map((e) => e.id)).toEqual(watchers[0]!.events().map((e) => e.id));
    expect(watchers[2]!.events().map((e) => e.cursor)).toEqual(watchers[0]!.events().map((e) => e.cursor));
  });

  it("a watcher that disconnects and resumes from its cursor on another replica misses nothing, while all three write", async () => {
    const reference = watch(watchGrpcJs(replicas[0]!.url, { kinds: ["session.created"] }));
    const first = watch(watchConnect(replicas[1]!.httpUrl, { kinds: ["session.created"] }));
    await Promise.all([reference.started(), first.started()]);
    // Writers on all three replicas at once; the watcher drops after a few events and comes back on another replica.
    const users = Array.from({ length: 30 }, (_, i) => `burst-${i}`);
    const writing = Promise.all([0, 1, 2].map(async (r) => {
      for (const u of users.filter((_, i) => i % 3 === r)) await store(r, u);
    }));
    await first.until((ev) => ev.length >= 4);
    first.close();
    await first.ended;
    const lastCursor = first.messages[first.messages.length - 1]!.cursor;
    const resumed = watch(watchGrpcJs(replicas[2]!.url, { kinds: ["session.created"], resumeCursor: lastCursor }));
    await writing;
    const all = await reference.until((ev) => ev.length >= users.length);
    const after = await resumed.until((ev) => ev.length >= all.length - first.events().length);
    const joined = [...first.events(), ...after].map((e) => e.id);
    expect(joined).toEqual(all.map((e) => e.id));
    expect(new Set(all.map((e) => e.userId))).toEqual(new Set(users));
  });

  it("a replica shutting down ends its streams with UNAVAILABLE; the watcher resumes on another and misses nothing", async () => {
    const onThird = watch(watchConnect(replicas[2]!.httpUrl, { kinds: ["session.created"] }));
    await onThird.started();
    await store(0, "before-shutdown");
    await onThird.until((ev) => ev.some((e) => e.userId === "before-shutdown"));
    const closing = replicas[2]!.close();
    expect(await onThird.ended).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    await closing;
    replicas.pop();
    const cursor = onThird.messages[onThird.messages.length - 1]!.cursor;
    await store(1, "after-shutdown");
    const resumed = watch(watchConnect(replicas[0]!.httpUrl, { kinds: ["session.created"], resumeCursor: cursor }));
    expect((await resumed.until((ev) => ev.length >= 1)).map((e) => e.userId)).toEqual(["after-shutdown"]);
  });

  it("no token in any event or any replica's log line, and no full session id in a log line", async () => {
    const all = watch(watchGrpcJs(replicas[0]!.url, { fromOldest: true }));
    const events = await all.until((ev) => ev.length >= sessionIds.length);
    const eventText = events.map((e) => toJsonString(EventSchema, e)).join("\n");
    const logText = started.map((r) => r.logs.text()).join("\n");
    expect(logText.length).toBeGreaterThan(0);
    for (const s of [...secrets, provider.clientSecret]) {
      expect(eventText).not.toContain(s);
      expect(logText).not.toContain(s);
    }
    for (const id of sessionIds) expect(logText).not.toContain(id);
    expect(events.map((e) => e.sessionId).sort()).toEqual([...sessionIds].sort());
  });
});
