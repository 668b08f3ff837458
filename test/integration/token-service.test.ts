import { Code, ConnectError } from "@connectrpc/connect";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, beforeEach, describe, expect, inject, it, onTestFinished, vi } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { TokenKind } from "../../gen/tokenservice/v1/token_service_pb.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import { SessionWaiter } from "../../src/refresh/waiter.js";
import { sessionRef } from "../../src/logger.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import type { GrpcJsError } from "../helpers/clients.js";
import { startTestProvider, type TestProvider, type TestTokenSet } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type Dialect, type TestService } from "../helpers/service.js";
import { gatedTurns, perTurn } from "../helpers/turns.js";

/** The reason of a ConnectError's google.rpc.ErrorInfo detail. */
function errorInfo(err: unknown) {
  expect(err).toBeInstanceOf(ConnectError);
  const [info] = (err as ConnectError).findDetails(ErrorInfoSchema);
  return info;
}

/** An unsigned JWT-shaped token with these claims (the service only reads times from it). */
function fakeJwt(claims: Record<string, unknown>): string {
  return `eyJhbGciOiJub25lIn0.${Buffer.from(JSON.stringify(claims)).toString("base64url")}.sig`;
}

async function rejection(p: Promise<unknown>): Promise<unknown> {
  try {
    await p;
  } catch (err) {
    return err;
  }
  throw new Error("expected the call to fail");
}

describe.each<Dialect>(["sqlite", "postgresql"])("TokenService on %s", (dialect) => {
  let provider: TestProvider;
  let svc: TestService;

  async function store(user: string, tokens: TestTokenSet, extra: { expiresAt?: Date } = {}) {
    const res = await svc.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: {
        accessToken: tokens.access_token,
        refreshToken: tokens.refresh_token,
        idToken: tokens.id_token,
        tokenType: tokens.token_type,
        scope: tokens.scope,
        ...(extra.expiresAt ? { expiresAt: timestampFromDate(extra.expiresAt) } : { expiresIn: BigInt(tokens.expires_in) }),
      },
    });
    return res.sessionId;
  }

  /** Stores a fresh login whose access token the service believes expired a second ago. */
  async function storeExpired(user: string) {
    const tokens = await provider.login(user);
    const sessionId = await store(user, tokens, { expiresAt: new Date(Date.now() - 1000) });
    return { tokens, sessionId };
  }

  beforeAll(async () => {
    provider = await startTestProvider();
    const databaseUrl = dialect === "postgresql" ? await createTestDatabase(inject("postgresUrl")) : undefined;
    svc = await startService({
      dialect,
      databaseUrl,
      provider,
      yaml: { refresh: { lease_seconds: 5, provider_timeout_seconds: 2, max_attempts: 2, retry_base_delay_ms: 20 } },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });
  beforeEach(() => {
    provider.resetStats();
    provider.faults.length = 0;
    provider.revocationFaults.length = 0;
  });

  it("stores a session and returns its access token and id_token, over grpc-js and Connect", async () => {
    const tokens = await provider.login("alice");
    const stored = await svc.grpcJs.call("StoreSession", {
      user_id: "alice",
      provider: "corp",
      tokens: {
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
        id_token: tokens.id_token,
        token_type: tokens.token_type,
        expires_in: String(tokens.expires_in),
        scope: tokens.scope,
      },
    });
    const sessionId = stored.session_id as string;
    expect(sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const expiresAt = stored.expires_at as { seconds: string };
    expect(Number(expiresAt.seconds)).toBeGreaterThan(Date.now() / 1000 + tokens.expires_in - 5);

    const byId = await svc.grpcJs.call("GetToken", { user_id: "alice", session_id: sessionId });
    expect(byId.token).toBe(tokens.access_token);
    expect(byId.token_type).toBe("Bearer");
    expect(byId.session_id).toBe(sessionId);
    expect(byId.scope).toBe(tokens.scope);

    const byUser = await svc.client.getToken({ userId: "alice", provider: "corp" });
    expect(byUser.token).toBe(tokens.access_token);
    expect(byUser.sessionId).toBe(sessionId);

    const id = await svc.jsonClient.getToken({ userId: "alice", sessionId, kind: TokenKind.ID });
    expect(id.token).toBe(tokens.id_token);
    expect(id.tokenType).toBe("N_A");
    expect(provider.stats.refreshes).toBe(0);
  });

  it("picks the newest active session when asked by user and provider", async () => {
    const older = await store("bob", await provider.login("bob"));
    const newerTokens = await provider.login("bob");
    const newer = await store("bob", newerTokens);
    expect(newer).not.toBe(older);
    const got = await svc.client.getToken({ userId: "bob", provider: "corp" });
    expect(got.sessionId).toBe(newer);
    expect(got.token).toBe(newerTokens.access_token);
  });

  it("refreshes an expired token just in time and persists the rotated refresh token", async () => {
    const { tokens, sessionId } = await storeExpired("carol");
    const first = await svc.grpcJs.call("GetToken", { user_id: "carol", session_id: sessionId });
    expect(first.token).not.toBe(tokens.access_token);
    expect(provider.stats.refreshes).toBe(1);
    // The old refresh token was rotated away at the provider.
    expect((await provider.redeem(tokens.refresh_token)).status).toBe(400);

    // That redeem made the provider revoke the grant (reuse detection), so use a new login
    // to check that the service stored the rotated token: two forced refreshes in a row work.
    const second = await storeExpired("carol2");
    const a = await svc.client.getToken({ userId: "carol2", sessionId: second.sessionId });
    const b = await svc.client.getToken({ userId: "carol2", sessionId: second.sessionId, forceRefresh: true });
    const c = await svc.client.getToken({ userId: "carol2", sessionId: second.sessionId, forceRefresh: true });
    expect(new Set([second.tokens.access_token, a.token, b.token, c.token]).size).toBe(4);
    expect(provider.stats.invalidGrants).toBe(0);
    expect(c.expiresAt!.seconds).toBeGreaterThan(BigInt(Math.floor(Date.now() / 1000)));
  });

  it("refreshes inside the margin or for min_valid_seconds, not otherwise", async () => {
    const tokens = await provider.login("dave");
    // A 300 s token issued 100 s ago: 200 s left, outside the 60 s margin.
    const now = Math.floor(Date.now() / 1000);
    const access = fakeJwt({ iat: now - 100, exp: now + 200 });
    const sessionId = await store("dave", { ...tokens, access_token: access }, { expiresAt: new Date((now + 200) * 1000) });
    for (let i = 0; i < 3; i++) {
      expect((await svc.client.getToken({ userId: "dave", sessionId })).token).toBe(access);
    }
    // More than a whole lifetime cannot be met by any token: capped at half (150 s), no refresh.
    expect((await svc.client.getToken({ userId: "dave", sessionId, minValidSeconds: 400 })).token).toBe(access);
    expect(provider.stats.refreshes).toBe(0);
    // 250 s is possible for a 300 s token but more than is left: refresh.
    const longer = await svc.client.getToken({ userId: "dave", sessionId, minValidSeconds: 250 });
    expect(longer.token).not.toBe(access);
    expect(Number(longer.expiresAt!.seconds) - Date.now() / 1000).toBeGreaterThan(250);
    expect(provider.stats.refreshes).toBe(1);
  });

  it("refreshes a token whose remaining life is inside the margin", async () => {
    const tokens = await provider.login("dora");
    const now = Math.floor(Date.now() / 1000);
    const access = fakeJwt({ iat: now - 250, exp: now + 50 });
    const sessionId = await store("dora", { ...tokens, access_token: access }, { expiresAt: new Date((now + 50) * 1000) });
    expect((await svc.client.getToken({ userId: "dora", sessionId })).token).not.toBe(access);
    expect(provider.stats.refreshes).toBe(1);
  });

  it("serves 100 concurrent callers of an expired token with one refresh", async () => {
    const { tokens, sessionId } = await storeExpired("erin");
    provider.faults.push({ kind: "delay", ms: 200 });
    const calls = Array.from({ length: 100 }, (_, i) =>
      i % 2 === 0
        ? svc.client.getToken({ userId: "erin", sessionId }).then((r) => r.token)
        : svc.grpcJs.call("GetToken", { user_id: "erin", session_id: sessionId }).then((r) => r.token as string),
    );
    const results = await Promise.all(calls);
    expect(new Set(results).size).toBe(1);
    expect(results[0]).not.toBe(tokens.access_token);
    expect(provider.stats.refreshes).toBe(1);
    expect(provider.stats.maxConcurrentRefreshes).toBe(1);
    expect(provider.stats.invalidGrants).toBe(0);
    expect(svc.app.coordinator.stats.coalesced).toBeGreaterThanOrEqual(99);
  });

  /**
   * An expired session of `user` whose lease another replica holds, and `n` GetToken callers here all waiting on that
   * replica's refresh (the first runs this process's one wait, the rest join it); `complete` stores that replica's
   * new tokens and announces them, as it would.
   */
  async function waitingOnAnotherReplica(user: string, n: number) {
    // This process's background refresh, where a test turned it on, would take the expired session's lease itself.
    await svc.app.background.stop();
    if (svc.app.config.refresh.background.enabled) onTestFinished(() => svc.app.background.start());
    const { sessionId } = await storeExpired(user);
    provider.resetStats();
    const repo = new SessionRepository(svc.app.orm, dialect);
    const row = (await repo.findById(sessionId))!;
    const now = new Date();
    const leased = (await repo.acquireLease(sessionId, row.version, "other-replica:1", now, new Date(now.getTime() + 5000)))!;
    expect(leased.leaseOwner).toBe("other-replica:1");
    const joinedBefore = svc.app.coordinator.stats.coalesced;
    const calls = Array.from({ length: n }, () => svc.client.getToken({ userId: user, sessionId }));
    for (let waited = 0; svc.app.coordinator.stats.coalesced - joinedBefore < n - 1; waited += 10) {
      if (waited > 10_000) throw new Error("the callers did not all join one refresh");
      await sleep(10);
    }
    /**
     * The other replica stores new tokens and announces them: in this process (SQLite has no channel), or with
     * `channel` on PostgreSQL only by the NOTIFY its write sends, returning once that has reached this process.
     */
    const complete = async (access: string, channel?: SessionWaiter) => {
      const vault = new TokenVault(svc.app.keyRing);
      const issued = new Date();
      const fields = {
        ...vault.sealAll(leased, { access, refresh: "refresh-2", id: undefined }),
        tokenType: "Bearer",
        scope: "",
        accessExpiresAt: new Date(issued.getTime() + 3_600_000),
        accessIssuedAt: issued,
        idExpiresAt: null,
        refreshExpiresAt: null,
      };
      if (channel && dialect === "postgresql") {
        const ref = sessionRef(sessionId);
        let arrived!: () => void;
        const heard = new Promise<void>((resolve) => (arrived = resolve));
        const unsubscribe = channel.subscribe({ changed: (r) => r === ref && arrived(), flush: () => undefined });
        try {
          const notice = channel.changeNotice(sessionId);
          expect(notice, "a cross-replica channel on PostgreSQL").toBeDefined();
          expect(await repo.completeRefresh(sessionId, "other-replica:1", leased.version, fields, issued, notice)).toBe(true);
          await Promise.race([heard, sleep(10_000).then(() => Promise.reject(new Error("the write's NOTIFY never came back through LISTEN")))]);
        } finally {
          unsubscribe();
        }
        return;
      }
      expect(await repo.completeRefresh(sessionId, "other-replica:1", leased.version, fields, issued)).toBe(true);
      await svc.app.coordinator.announce(sessionId);
    };
    return { calls, complete };
  }

  it("callers waiting on another replica's refresh share one decrypt of its result", async () => {
    // Until all 50 wait on this process's one refresh: the first runs it, 49 join it...
    const { calls, complete } = await waitingOnAnotherReplica("wendy", 50);
    // ...and the other replica stores new tokens, which the 50 waiting callers here must all get.
    const opened = vi.spyOn(TokenVault.prototype, "openField");
    try {
      await complete("access-from-elsewhere");
      const answers = await Promise.all(calls);
      expect(answers.map((a) => a.token)).toEqual(Array.from({ length: 50 }, () => "access-from-elsewhere"));
      expect(opened.mock.calls.filter(([, field]) => field === "access")).toHaveLength(1);
    } finally {
      opened.mockRestore();
    }
    expect(provider.stats.refreshes).toBe(0);
  });

  it("callers woken together by one refresh go on 16 per event-loop turn", async () => {
    const { calls, complete } = await waitingOnAnotherReplica("gita", 40);
    const { result: answers, turns } = await gatedTurns(async () => {
      await complete("access-for-gita");
      return Promise.all(calls);
    });
    expect(answers.map((a) => a.token)).toEqual(Array.from({ length: 40 }, () => "access-for-gita"));
    expect(perTurn(turns)).toEqual([16, 16, 8]);
  });

  it("a waiting replica that misses the change while it reads the row still wakes at once, not after its delay", async () => {
    const originalWatch = SessionWaiter.prototype.watch;
    const originalRead = SessionRepository.prototype.findById;
    // How each of this process's waits ended (true: a change announcement woke it), and the watches still open.
    const woken: boolean[] = [];
    let open = 0;
    let waiter: SessionWaiter | undefined;
    const watch = vi.spyOn(SessionWaiter.prototype, "watch").mockImplementation(function (this: SessionWaiter, sessionId: string) {
      const inner = originalWatch.call(this, sessionId);
      waiter ??= watch.mock.contexts[0] as SessionWaiter;
      open++;
      return {
        next: async (ms: number) => {
          const w = await inner.next(ms);
          woken.push(w);
          return w;
        },
        close: () => {
          open--;
          inner.close();
        },
      };
    });
    let complete: ((access: string, channel?: SessionWaiter) => Promise<void>) | undefined;
    // The first read after a wait: the other replica stores its tokens and its announcement arrives after this read
    // saw the row and before the next wait begins, the window in which a sleep begun only then would miss it. On
    // PostgreSQL it arrives as the other replica's would, by the NOTIFY of its write through this process's LISTEN.
    const read = vi.spyOn(SessionRepository.prototype, "findById").mockImplementation(async function (this: SessionRepository, id: string) {
      const row = await originalRead.call(this, id);
      const now = complete && woken.length > 0 ? complete : undefined;
      if (now) {
        complete = undefined;
        await now("access-for-wanda", waiter);
      }
      return row;
    });
    try {
      const waiting = await waitingOnAnotherReplica("wanda", 1);
      complete = waiting.complete;
      const [answer] = await Promise.all(waiting.calls);
      expect(answer!.token).toBe("access-for-wanda");
      expect(complete).toBeUndefined();
      // The first wait ran out (nothing had changed yet); the next found the announcement kept and returned at once.
      expect(woken).toEqual([false, true]);
      expect(open).toBe(0);
      expect(waiter!.watchedCount).toBe(0);
    } finally {
      read.mockRestore();
      watch.mockRestore();
    }
    expect(provider.stats.refreshes).toBe(0);
  });

  it("answers REAUTH_REQUIRED when the provider rejects the refresh, without asking it again", async () => {
    const { tokens, sessionId } = await storeExpired("frank");
    // Someone else spends the refresh token: the provider now revokes the grant on reuse.
    expect((await provider.redeem(tokens.refresh_token)).status).toBe(200);
    provider.resetStats();

    const err = await rejection(svc.client.getToken({ userId: "frank", sessionId }));
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    const info = errorInfo(err);
    expect(info?.reason).toBe("REAUTH_REQUIRED");
    expect(info?.domain).toBe("tokenservice.v1");
    expect(info?.metadata.provider_error).toBe("invalid_grant");
    expect(provider.stats.refreshes).toBe(1);

    const again = (await rejection(
      svc.grpcJs.call("GetToken", { user_id: "frank", session_id: sessionId }),
    )) as GrpcJsError;
    expect(again.code).toBe(GrpcStatus.FAILED_PRECONDITION);
    const byUser = await rejection(svc.client.getToken({ userId: "frank", provider: "corp" }));
    expect(errorInfo(byUser)?.reason).toBe("REAUTH_REQUIRED");
    expect(provider.stats.refreshes).toBe(1);
  });

  it("keeps the session through a provider 500 and answers UNAVAILABLE while the token is expired", async () => {
    const { sessionId } = await storeExpired("grace");
    provider.faults.push({ kind: "status", status: 500 }, { kind: "status", status: 500 });
    const err = await rejection(svc.client.getToken({ userId: "grace", sessionId }));
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect(errorInfo(err)?.reason).toBe("PROVIDER_UNAVAILABLE");
    expect(provider.stats.refreshes).toBe(2); // first try plus one retry (max_attempts: 2)

    // The provider is back: the same session refreshes fine.
    const ok = await svc.client.getToken({ userId: "grace", sessionId });
    expect(ok.token).toBeTruthy();
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("returns the still-valid token when a refresh inside the margin fails", async () => {
    const tokens = await provider.login("heidi");
    // 40 s left of a 300 s token: inside the 60 s margin, still valid.
    const now = Math.floor(Date.now() / 1000);
    const access = fakeJwt({ iat: now - 260, exp: now + 40 });
    const sessionId = await store("heidi", { ...tokens, access_token: access }, { expiresAt: new Date((now + 40) * 1000) });
    provider.faults.push({ kind: "status", status: 503 }, { kind: "status", status: 503 });
    const got = await svc.client.getToken({ userId: "heidi", sessionId });
    expect(got.token).toBe(access);
    expect(provider.stats.refreshes).toBe(2);
    // A forced refresh does not settle for the old token.
    provider.faults.push({ kind: "status", status: 503 }, { kind: "status", status: 503 });
    const forced = await rejection(svc.client.getToken({ userId: "heidi", sessionId, forceRefresh: true }));
    expect((forced as ConnectError).code).toBe(Code.Unavailable);
  });

  it("keeps the session when a 503 carries a WWW-Authenticate challenge (a gateway's, not the token endpoint's)", async () => {
    const { sessionId } = await storeExpired("ida");
    const challenge = { kind: "status" as const, status: 503, headers: { "www-authenticate": 'Bearer realm="gateway"' } };
    provider.faults.push(challenge, challenge);
    const err = await rejection(svc.client.getToken({ userId: "ida", sessionId }));
    expect((err as ConnectError).code).toBe(Code.Unavailable);
    expect(errorInfo(err)?.metadata.cause).toBe("http_503");
    expect((await svc.client.getToken({ userId: "ida", sessionId })).token).toBeTruthy();
  });

  it("refreshes for a caller with a short deadline (under a second)", async () => {
    const { tokens, sessionId } = await storeExpired("jan");
    provider.faults.push({ kind: "delay", ms: 100 });
    const got = await svc.client.getToken({ userId: "jan", sessionId }, { timeoutMs: 700 });
    expect(got.token).not.toBe(tokens.access_token);
    const viaGrpcJs = await svc.grpcJs.call("GetToken", { user_id: "jan", session_id: sessionId, force_refresh: true }, { deadlineMs: 450 });
    expect(viaGrpcJs.token).not.toBe(got.token);
  });

  it("answers a caller that goes away while it waits on a refresh CANCELED, and the refresh goes on for the next", async () => {
    const { tokens, sessionId } = await storeExpired("jonas");
    const before = provider.stats.refreshes;
    const canceled = () => svc.logs.lines().filter((l) => l.msg === "rpc" && l.rpc === "tokenservice.v1.TokenService/GetToken" && l.code === "canceled").length;
    const canceledBefore = canceled();
    provider.faults.push({ kind: "delay", ms: 800 });
    const ac = new AbortController();
    const waiting = rejection(svc.client.getToken({ userId: "jonas", sessionId }, { signal: ac.signal }));
    await sleep(200);
    ac.abort();
    expect(((await waiting) as ConnectError).code).toBe(Code.Canceled);
    await vi.waitFor(() => expect(canceled()).toBe(canceledBefore + 1));
    // The refresh it set off was not cut short: the next caller gets its token, with no second provider call.
    const got = await svc.client.getToken({ userId: "jonas", sessionId });
    expect(got.token).not.toBe(tokens.access_token);
    expect(provider.stats.refreshes - before).toBe(1);
  });

  it("honours Retry-After from a 429 within the call", async () => {
    const { tokens, sessionId } = await storeExpired("ivan");
    provider.faults.push({ kind: "status", status: 429, retryAfter: "1" });
    const started = Date.now();
    const got = await svc.client.getToken({ userId: "ivan", sessionId });
    expect(got.token).not.toBe(tokens.access_token);
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(provider.stats.refreshes).toBe(2);
  });

  it("revokes a session here and at the provider", async () => {
    const tokens = await provider.login("judy");
    const sessionId = await store("judy", tokens);
    expect((await provider.introspect(tokens.refresh_token)).active).toBe(true);
    await svc.grpcJs.call("RevokeSession", { user_id: "judy", session_id: sessionId });
    expect(provider.stats.revocations).toBeGreaterThanOrEqual(1);
    expect((await provider.introspect(tokens.refresh_token)).active).toBe(false);
    const err = await rejection(svc.client.getToken({ userId: "judy", sessionId }));
    expect((err as ConnectError).code).toBe(Code.NotFound);
    const twice = await rejection(svc.client.revokeSession({ userId: "judy", sessionId }));
    expect((twice as ConnectError).code).toBe(Code.NotFound);
  });

  it("deletes the session even when revocation at the provider fails", async () => {
    const tokens = await provider.login("ken");
    const sessionId = await store("ken", tokens);
    provider.revocationFaults.push(...Array.from({ length: 4 }, () => ({ kind: "status" as const, status: 500 })));
    await svc.client.revokeSession({ userId: "ken", sessionId });
    const err = await rejection(svc.client.getToken({ userId: "ken", sessionId }));
    expect((err as ConnectError).code).toBe(Code.NotFound);
    expect(svc.logs.text()).toContain("revocation at the provider failed");
    // The provider never heard of it: the grant is still alive there.
    expect((await provider.introspect(tokens.refresh_token)).active).toBe(true);
  });

  it("answers NOT_FOUND alike for an unknown session and for another user's session", async () => {
    const sessionId = await store("leo", await provider.login("leo"));
    const unknown = (await rejection(
      svc.client.getToken({ userId: "leo", sessionId: "A".repeat(43) }),
    )) as ConnectError;
    const foreign = (await rejection(svc.client.getToken({ userId: "mallory", sessionId }))) as ConnectError;
    expect(unknown.code).toBe(Code.NotFound);
    expect(foreign.code).toBe(Code.NotFound);
    expect(foreign.rawMessage).toBe(unknown.rawMessage);
    expect(errorInfo(foreign)?.reason).toBe(errorInfo(unknown)?.reason);
    const revokeForeign = (await rejection(svc.client.revokeSession({ userId: "mallory", sessionId }))) as ConnectError;
    expect(revokeForeign.code).toBe(Code.NotFound);
    // Still there for its owner.
    expect((await svc.client.getToken({ userId: "leo", sessionId })).sessionId).toBe(sessionId);
  });

  it("rejects bad input with INVALID_ARGUMENT naming the field", async () => {
    const tokens = await provider.login("nina");
    const base = { userId: "nina", provider: "corp", tokens: { accessToken: tokens.access_token } };
    const cases: Array<[() => Promise<unknown>, string]> = [
      [() => svc.client.storeSession({ ...base, userId: "" }), "user_id"],
      [() => svc.client.storeSession({ ...base, userId: "x".repeat(257) }), "user_id"],
      [() => svc.client.storeSession({ ...base, provider: "nope" }), "provider"],
      [() => svc.client.storeSession({ ...base, tokens: { accessToken: "" } }), "tokens.access_token"],
      [() => svc.client.storeSession({ ...base, tokens: { accessToken: "a".repeat(64 * 1024 + 1) } }), "tokens.access_token"],
      [() => svc.client.storeSession({ ...base, tokens: { accessToken: "a", refreshToken: "r".repeat(64 * 1024 + 1) } }), "tokens.refresh_token"],
      [() => svc.client.storeSession({ ...base, tokens: { accessToken: "a", idToken: "not-a-jwt" } }), "tokens.id_token"],
      [() => svc.client.storeSession({ ...base, tokens: { accessToken: "a", expiresIn: -5n } }), "tokens.expires_in"],
      [() => svc.client.getToken({ userId: "nina", sessionId: "short" }), "session_id"],
      [() => svc.client.getToken({ userId: "nina" }), "provider"],
      [() => svc.client.getToken({ userId: "", provider: "corp" }), "user_id"],
      [() => svc.client.revokeSession({ userId: "nina", sessionId: "" }), "session_id"],
    ];
    for (const [call, field] of cases) {
      const err = await rejection(call());
      expect((err as ConnectError).code, field).toBe(Code.InvalidArgument);
      expect(errorInfo(err)?.metadata.field).toBe(field);
      expect((err as ConnectError).rawMessage).toContain(field);
    }
    const viaGrpc = (await rejection(svc.grpcJs.call("StoreSession", { user_id: "", provider: "corp" }))) as GrpcJsError;
    expect(viaGrpc.code).toBe(GrpcStatus.INVALID_ARGUMENT);
    expect(viaGrpc.details).toContain("user_id");
  });

  it("stores and returns tokens of tens of KiB", async () => {
    const big = fakeJwt({ groups: "g".repeat(45_000) });
    expect(big.length).toBeGreaterThan(60_000);
    const stored = await svc.client.storeSession({
      userId: "olga",
      provider: "corp",
      tokens: { accessToken: big, expiresIn: 3600n },
    });
    const got = await svc.grpcJs.call("GetToken", { user_id: "olga", session_id: stored.sessionId });
    expect(got.token).toBe(big);
  });

  it("works out expiry from the JWT exp, else the provider default", async () => {
    const exp = Math.floor(Date.now() / 1000) + 1234;
    const jwt = fakeJwt({ exp });
    const a = await svc.client.storeSession({ userId: "pat", provider: "corp", tokens: { accessToken: jwt } });
    expect(Number(a.expiresAt!.seconds)).toBe(exp);
    const b = await svc.client.storeSession({ userId: "pat", provider: "corp", tokens: { accessToken: "opaque" } });
    const defaultExpiry = Number(b.expiresAt!.seconds) - Date.now() / 1000;
    expect(defaultExpiry).toBeGreaterThan(290);
    expect(defaultExpiry).toBeLessThanOrEqual(300);
  });

  it("answers REAUTH_REQUIRED for an expired session that has no refresh token", async () => {
    const stored = await svc.client.storeSession({
      userId: "quinn",
      provider: "corp",
      tokens: { accessToken: "opaque", expiresAt: timestampFromDate(new Date(Date.now() - 5000)) },
    });
    const err = await rejection(svc.client.getToken({ userId: "quinn", sessionId: stored.sessionId }));
    expect(errorInfo(err)?.reason).toBe("REAUTH_REQUIRED");
    expect(errorInfo(err)?.metadata.provider_error).toBe("no_refresh_token");
    expect(provider.stats.refreshes).toBe(0);
  });
});
