import { createHook } from "node:async_hooks";
import { create } from "@bufbuild/protobuf";
import * as grpc from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { GetTokenRequestSchema, TokenService, type GetTokenResponse } from "../../gen/tokenservice/v1/token_service_pb.js";
import { createLogger } from "../../src/logger.js";
import { CallerDirectory } from "../../src/rpc/auth.js";
import { RpcChain } from "../../src/rpc/chain.js";
import { grpcHandlers } from "../../src/rpc/grpc-service.js";
import { createTokenServiceHandlers } from "../../src/rpc/token-service.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { LogSink, startService, type TestService } from "../helpers/service.js";

/**
 * GetToken's hot path as the gRPC listener runs it: the service's own
 * session service and cache behind grpc-js's handler for GetToken, called
 * the way grpc-js calls it. A cached session with a fresh token is answered
 * before the handler returns and without a single promise (with
 * AsyncLocalStorage on, each one also runs Node's async hooks); every other
 * way still answers, later.
 */
describe("GetToken's hot path on the gRPC listener", () => {
  let provider: TestProvider;
  let svc: TestService;
  let getToken: grpc.handleUnaryCall<unknown, unknown>;
  const logs = new LogSink();

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({ dialect: "sqlite", provider });
    const handlers = createTokenServiceHandlers(svc.app.sessions, {} as never, {} as never);
    const chain = new RpcChain(new CallerDirectory([]), createLogger("info", logs));
    getToken = grpcHandlers(TokenService, handlers, chain).getToken as grpc.handleUnaryCall<unknown, unknown>;
  });

  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  async function login(user: string, expiresAt?: Date, resources: string[] = []) {
    const tokens = await provider.login(user, { resources });
    const { sessionId } = await svc.client.storeSession({
      userId: user,
      provider: "corp",
      resources,
      tokens: {
        accessToken: tokens.access_token,
        refreshToken: tokens.refresh_token,
        ...(expiresAt ? { expiresAt: { seconds: BigInt(Math.floor(expiresAt.getTime() / 1000)), nanos: 0 } } : { expiresIn: BigInt(tokens.expires_in) }),
      },
    });
    return { tokens, sessionId };
  }

  /** Calls the handler as grpc-js does; says whether it answered before returning, and how many promises that took. */
  function call(userId: string, sessionId: string, more: { provider?: string; forceRefresh?: boolean; resource?: string } = {}) {
    const fake = {
      request: create(GetTokenRequestSchema, { userId, sessionId, ...more }),
      metadata: new grpc.Metadata(),
      cancelled: false,
      getPeer: () => "127.0.0.1:5000",
      getDeadline: () => Infinity,
      getAuthContext: () => ({}),
      once: () => fake,
    };
    let promises = 0;
    let answeredAtOnce = false;
    let returned = false;
    const answered = new Promise<{ err: unknown; value: GetTokenResponse | undefined }>((resolve) => {
      const hook = createHook({ init: (_id, type) => void (type === "PROMISE" && promises++) }).enable();
      try {
        getToken(fake as never, (err, value) => {
          answeredAtOnce = !returned;
          resolve({ err, value: value as GetTokenResponse | undefined });
        });
      } finally {
        hook.disable();
      }
      returned = true;
    });
    return { answered, at: () => ({ answeredAtOnce, promises }) };
  }

  it("answers a cached, fresh token before the handler returns, without a promise", async () => {
    const { tokens, sessionId } = await login("hot-alice");
    // The first read fills the cache; it is a database read, so it answers later.
    const first = call("hot-alice", sessionId);
    expect((await first.answered).value?.token).toBe(tokens.access_token);
    expect(first.at().answeredAtOnce).toBe(false);
    // The hook does count promises: the database read makes them.
    expect(first.at().promises).toBeGreaterThan(0);

    const second = call("hot-alice", sessionId);
    expect(second.at()).toEqual({ answeredAtOnce: true, promises: 0 });
    const { err, value } = await second.answered;
    expect(err).toBeNull();
    expect(value).toMatchObject({ token: tokens.access_token, sessionId, tokenType: "Bearer" });
    // Built once per cached session version: the same frozen response again.
    const third = call("hot-alice", sessionId);
    expect((await third.answered).value).toBe(value);
    expect(Object.isFrozen(value)).toBe(true);
    // The chain logged the call as it logs every other.
    expect(logs.lines().filter((l) => l.msg === "rpc").at(-1)).toMatchObject({ rpc: "tokenservice.v1.TokenService/GetToken", code: "ok" });
  });

  it("answers errors found on the hot path at once too, with their status", async () => {
    const { sessionId } = await login("hot-bob");
    await call("hot-bob", sessionId).answered;
    // A cached session asked for at another provider: NOT_FOUND, at once, as for a session that does not exist.
    const elsewhere = call("hot-bob", sessionId, { provider: "another" });
    expect(elsewhere.at()).toEqual({ answeredAtOnce: true, promises: 0 });
    expect((await elsewhere.answered).err).toMatchObject({ code: grpc.status.NOT_FOUND });
    // Someone else's user id misses the cache (it is keyed by user) and is NOT_FOUND after the read.
    expect((await call("hot-mallory", sessionId).answered).err).toMatchObject({ code: grpc.status.NOT_FOUND });
    const bad = call("", sessionId);
    expect(bad.at().answeredAtOnce).toBe(true);
    expect((await bad.answered).err).toMatchObject({ code: grpc.status.INVALID_ARGUMENT });
  });

  it("refreshes a cached session when asked to, through a promise, and answers the new token", async () => {
    const { tokens, sessionId } = await login("hot-dave");
    await call("hot-dave", sessionId).answered;
    expect(call("hot-dave", sessionId).at().answeredAtOnce).toBe(true);
    // force_refresh on the cached session: the cached entry leads to a refresh at the provider.
    const forced = call("hot-dave", sessionId, { forceRefresh: true });
    expect(forced.at().answeredAtOnce).toBe(false);
    const { err, value } = await forced.answered;
    expect(err).toBeNull();
    expect(value?.token).not.toBe(tokens.access_token);
  });

  it("still refreshes a cached session whose token is due, through a promise, and answers the new token", async () => {
    const { tokens, sessionId } = await login("hot-carol", new Date(Date.now() - 1_000));
    // Stored as expired a second ago: this read refreshes it at the provider.
    const refreshed = (await call("hot-carol", sessionId).answered).value!.token;
    expect(refreshed).not.toBe(tokens.access_token);
    // The refreshed row is read (and cached) again by the next call; the one after it is the hot path.
    expect((await call("hot-carol", sessionId).answered).value?.token).toBe(refreshed);
    const again = call("hot-carol", sessionId);
    expect(again.at()).toEqual({ answeredAtOnce: true, promises: 0 });
    expect((await again.answered).value?.token).toBe(refreshed);
  });

  it("gives callers that shared one refresh one frozen response, so that it is encoded once", async () => {
    const { tokens, sessionId } = await login("hot-frank", new Date(Date.now() - 1_000));
    const before = provider.stats.refreshes;
    const calls = Array.from({ length: 6 }, () => call("hot-frank", sessionId));
    const answers = await Promise.all(calls.map((c) => c.answered));
    expect(provider.stats.refreshes - before).toBe(1);
    const [first] = answers;
    expect(first!.err).toBeNull();
    expect(first!.value?.token).not.toBe(tokens.access_token);
    expect(Object.isFrozen(first!.value)).toBe(true);
    for (const { err, value } of answers) {
      expect(err).toBeNull();
      expect(value).toBe(first!.value);
    }
  });

  it("answers a held audience token before the handler returns, without a promise; the first ask goes to the provider", async () => {
    const resource = "https://tools.example/mcp";
    const { tokens, sessionId } = await login("hot-erin", undefined, [resource]);
    await call("hot-erin", sessionId).answered;
    // The audience token is not held yet: a refresh-token grant for the resource, through a promise.
    const first = call("hot-erin", sessionId, { resource });
    expect(first.at().answeredAtOnce).toBe(false);
    const got = await first.answered;
    expect(got.err).toBeNull();
    const audienceToken = got.value!.token;
    expect(audienceToken).not.toBe(tokens.access_token);
    expect(JSON.parse(Buffer.from(audienceToken.split(".")[1]!, "base64url").toString())).toMatchObject({ aud: resource });

    // That grant rotated the session's refresh token, so the session's cache entry was dropped: the next ask reads
    // the session again, and the audience token from its own row, through a promise, and holds it in the new entry.
    const reread = call("hot-erin", sessionId, { resource });
    expect(reread.at().answeredAtOnce).toBe(false);
    expect((await reread.answered).value?.token).toBe(audienceToken);
    const held = call("hot-erin", sessionId, { resource });
    expect(held.at()).toEqual({ answeredAtOnce: true, promises: 0 });
    const heldValue = (await held.answered).value;
    expect(heldValue).toMatchObject({ token: audienceToken, sessionId });
    // Built once per held token: the same frozen response again (so the listener encodes it once).
    const again = call("hot-erin", sessionId, { resource });
    expect(again.at()).toEqual({ answeredAtOnce: true, promises: 0 });
    expect((await again.answered).value).toBe(heldValue);
    expect(Object.isFrozen(heldValue)).toBe(true);
    // A resource the session was not granted is refused at once, before any provider call.
    const refused = call("hot-erin", sessionId, { resource: "https://elsewhere.example/" });
    expect(refused.at().answeredAtOnce).toBe(true);
    expect((await refused.answered).err).toMatchObject({ code: grpc.status.FAILED_PRECONDITION });
  });
});
