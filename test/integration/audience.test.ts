import { createHash } from "node:crypto";
import { Code, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { toJsonString } from "@bufbuild/protobuf";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { decodeJwt, decodeProtectedHeader } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ListSessionsResponseSchema, TokenKind, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { callTool } from "../../examples/chat-gateway/tools.js";
import { AudienceTokenSchema } from "../../src/db/provider-entity.js";
import { SessionSchema } from "../../src/db/session-entity.js";
import { AudienceTokenRepository } from "../../src/db/audience-repository.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { rotateAudienceKeys } from "../../src/sessions/key-rotation.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { sessionRef } from "../../src/logger.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { TOKEN_EXCHANGE, startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { failure } from "../helpers/failure.js";
import { startService, type TestService } from "../helpers/service.js";
import { gatedTurns, perTurn } from "../helpers/turns.js";

/**
 * Tokens bound to their audience: GetToken with `resource` returns a token
 * for that one RFC 8707 resource, obtained with a refresh-token grant that
 * names it (or, in exchange mode, an RFC 8693 token exchange), kept in its
 * own encrypted row and refreshed with the session's single-flight
 * guarantees. Proven against a real oidc-provider (rotation on, JWT access
 * tokens whose aud is the resource) and two real MCP servers that verify
 * those tokens.
 */

type Tokens = Client<typeof TokenService>;

function bearer(credential: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${credential}`);
    return next(req);
  };
}

/** The text a whoami tool call returned, parsed. */
function whoami(outcome: Awaited<ReturnType<typeof callTool>>): { server: string; sub: string; aud: string } {
  expect(outcome.kind).toBe("result");
  const result = (outcome as { result: { content: Array<{ text: string }> } }).result;
  return JSON.parse(result.content[0]!.text) as { server: string; sub: string; aud: string };
}

describe("audience tokens in refresh mode (RFC 8707), one replica", () => {
  let provider: TestProvider;
  let svc: TestService;
  let tokens: Tokens;
  let a: TestMcpServer;
  let b: TestMcpServer;

  beforeAll(async () => {
    provider = await startTestProvider();
    [a, b] = await Promise.all([startMcpServer(provider.issuer, "A"), startMcpServer(provider.issuer, "B")]);
    svc = await startService({ dialect: "sqlite", provider });
    tokens = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url }));
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([a?.close(), b?.close()]);
    await provider?.close();
  });
  beforeEach(() => provider.resetStats());

  /** A login granted `resources`, stored through StoreSession. */
  async function login(user: string, resources: string[]) {
    const set = await provider.login(user, { resources });
    const stored = await tokens.storeSession({
      userId: user,
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
      resources,
    });
    return { ...stored, set };
  }

  const audienceRows = async (sessionId: string) =>
    svc.app.orm.em.fork().find(AudienceTokenSchema, { sessionId }, { disableIdentityMap: true });

  it("returns a JWT access token for that server only: A's tool call succeeds with it, B refuses it with 401", async () => {
    const { sessionId, set } = await login("ada", [a.url, b.url]);
    const forA = await tokens.getToken({ userId: "ada", sessionId, resource: a.url });
    expect(decodeProtectedHeader(forA.token).typ).toBe("at+jwt");
    expect(decodeJwt(forA.token)).toMatchObject({ aud: a.url, sub: "ada", iss: provider.issuer });
    expect(forA.token).not.toBe(set.access_token);
    expect(forA.sessionId).toBe(sessionId);
    expect(forA.tokenType.toLowerCase()).toBe("bearer");
    // One refresh-token grant that named A, and nothing else.
    expect(provider.stats.tokenRequests).toEqual([{ grantType: "refresh_token", resource: [a.url], audience: [] }]);

    expect(whoami(await callTool(a.url, forA.token, "whoami", {}, 10_000))).toEqual({ server: "A", sub: "ada", aud: a.url });
    expect(await callTool(b.url, forA.token, "whoami", {}, 10_000)).toMatchObject({ kind: "refused", status: 401 });
    expect(b.refused.wrong_audience).toBe(1);
    // And the session's own token is for neither.
    expect(await callTool(a.url, set.access_token, "whoami", {}, 10_000)).toMatchObject({ kind: "refused", status: 401 });

    // B's token is another one, for B; stock grpc-js asks the same way.
    const forB = await svc.grpcJs.call("GetToken", { user_id: "ada", session_id: sessionId, resource: b.url });
    expect(decodeJwt(String(forB.token)).aud).toBe(b.url);
    expect(whoami(await callTool(b.url, String(forB.token), "whoami", {}, 10_000)).server).toBe("B");

    // Held: asking again costs no provider call, and the session's own token is unchanged.
    const before = provider.stats.tokenRequests.length;
    expect((await tokens.getToken({ userId: "ada", sessionId, resource: a.url })).token).toBe(forA.token);
    expect((await svc.jsonClient.getToken({ userId: "ada", sessionId, resource: a.url })).token).toBe(forA.token);
    expect((await tokens.getToken({ userId: "ada", sessionId })).token).toBe(set.access_token);
    expect(provider.stats.tokenRequests.length).toBe(before);

    // Each is stored once, encrypted: the row holds no token in clear.
    const rows = await audienceRows(sessionId);
    expect(rows.map((r) => r.resource).sort()).toEqual([a.url, b.url].sort());
    for (const r of rows) {
      expect(Buffer.from(r.accessCt).toString("latin1")).not.toContain(forA.token.slice(-20));
      expect(Buffer.from(r.accessCt).toString("latin1")).not.toContain(String(forB.token).slice(-20));
    }
  });

  it("sends each rotated refresh token once: the session and every audience go on with the newest one", async () => {
    const { sessionId } = await login("bea", [a.url, b.url]);
    const sent: string[] = [];
    const seen = provider.stats.tokenRequests;
    for (const step of [a.url, b.url, "", a.url, b.url, ""]) {
      const got = await tokens.getToken({ userId: "bea", sessionId, resource: step, forceRefresh: true });
      // The session's own token is opaque here; each audience token is a JWT for its resource.
      if (step !== "") expect(decodeJwt(got.token).aud).toBe(step);
      sent.push(step);
    }
    expect(seen.map((r) => r.grantType)).toEqual(Array(6).fill("refresh_token"));
    expect(seen.map((r) => r.resource[0] ?? "")).toEqual(sent);
    expect(provider.stats.invalidGrants).toBe(0);
    // The last refresh token stored is the live one at the provider (the grant was never revoked by a reuse).
    expect((await tokens.getToken({ userId: "bea", sessionId, resource: a.url, forceRefresh: true })).token).toBeTruthy();
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("lets callers woken together by one audience token go on 16 per event-loop turn", async () => {
    const { sessionId } = await login("gale", [a.url]);
    // Long enough that all 40 calls are waiting on the one token request before it is answered.
    provider.faults.push({ kind: "delay", ms: 1000 });
    const { result: answers, turns } = await gatedTurns(() =>
      Promise.all(Array.from({ length: 40 }, () => tokens.getToken({ userId: "gale", sessionId, resource: a.url }))),
    );
    expect(new Set(answers.map((got) => got.token)).size).toBe(1);
    expect(decodeJwt(answers[0]!.token).aud).toBe(a.url);
    expect(provider.stats.tokenRequests).toHaveLength(1);
    expect(perTurn(turns)).toEqual([16, 16, 8]);
  });

  it("refuses a resource the session was not granted with RESOURCE_NOT_GRANTED, without calling the provider; the session is intact", async () => {
    const { sessionId } = await login("cy", [a.url]);
    const f = await failure(tokens.getToken({ userId: "cy", sessionId, resource: b.url }));
    expect(f).toMatchObject({ code: Code.FailedPrecondition, reason: "RESOURCE_NOT_GRANTED", metadata: { resource: b.url } });
    // With provider (newest session) instead of a session id, the same.
    expect((await failure(tokens.getToken({ userId: "cy", provider: "corp", resource: b.url }))).reason).toBe("RESOURCE_NOT_GRANTED");
    expect(provider.stats.tokenRequests).toEqual([]);
    // oidc-provider would have consumed the refresh token before refusing: the session still refreshes.
    expect(decodeJwt((await tokens.getToken({ userId: "cy", sessionId, resource: a.url })).token).aud).toBe(a.url);
    await tokens.getToken({ userId: "cy", sessionId, forceRefresh: true });
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("checks the resource before anything else: absolute URI, no fragment, access tokens only", async () => {
    const { sessionId } = await login("dee", [a.url]);
    for (const bad of ["not a uri", "/relative/path", `${a.url}#frag`, `${a.url}?key=secret`, a.url.replace("http://", "http://user:pw@")]) {
      const f = await failure(tokens.getToken({ userId: "dee", sessionId, resource: bad }));
      expect(f, bad).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "resource" } });
    }
    const id = await failure(tokens.getToken({ userId: "dee", sessionId, resource: a.url, kind: TokenKind.ID }));
    expect(id).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "resource" } });
    const stored = await failure(
      tokens.storeSession({ userId: "dee", provider: "corp", tokens: { accessToken: "x", expiresIn: 60n }, resources: ["mcp.example"] }),
    );
    expect(stored).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "resources" } });
    expect(provider.stats.tokenRequests).toEqual([]);
  });

  it("lists the session's resources and each audience token's expiry in ListSessions, never a token", async () => {
    const { sessionId } = await login("eve", [a.url, b.url]);
    const forA = await tokens.getToken({ userId: "eve", sessionId, resource: a.url });
    const { sessions } = await tokens.listSessions({ userId: "eve" });
    expect(sessions).toHaveLength(1);
    const s = sessions[0]!;
    expect(s.resources).toEqual([a.url, b.url]);
    expect(s.audienceTokens.map((t) => t.resource)).toEqual([a.url]);
    expect(timestampDate(s.audienceTokens[0]!.expiresAt!).getTime()).toBe(timestampDate(forA.expiresAt!).getTime());
    const json = toJsonString(ListSessionsResponseSchema, await svc.jsonClient.listSessions({ userId: "eve" }));
    expect(json).toContain(a.url);
    expect(json).not.toContain(forA.token.split(".")[2]);
  });

  it("takes the audience tokens with RevokeSession and revokes them at the provider too", async () => {
    const { sessionId } = await login("fay", [a.url, b.url]);
    await tokens.getToken({ userId: "fay", sessionId, resource: a.url });
    await tokens.getToken({ userId: "fay", sessionId, resource: b.url });
    expect(await audienceRows(sessionId)).toHaveLength(2);
    provider.resetStats();
    await tokens.revokeSession({ userId: "fay", sessionId });
    expect(await audienceRows(sessionId)).toHaveLength(0);
    // Refresh token, session access token, then each audience token (oidc-provider cannot revoke JWTs, but it is asked).
    expect(provider.stats.revocations).toBe(4);
    expect(svc.logs.lines().filter((l) => l.msg === "revocation of an audience token at the provider failed; it lapses at its expiry" && l.code === "unsupported_token_type")).toHaveLength(2);
    const audit = svc.logs.lines().find((l) => l.event === "revoke" && l.userId === "fay");
    expect(audit).toMatchObject({ audit: true, audienceTokens: 2 });
  });

  it("takes the audience tokens with RevokeUserSessions", async () => {
    const one = await login("gus", [a.url]);
    const two = await login("gus", [b.url]);
    await tokens.getToken({ userId: "gus", sessionId: one.sessionId, resource: a.url });
    await tokens.getToken({ userId: "gus", sessionId: two.sessionId, resource: b.url });
    provider.resetStats();
    expect((await tokens.revokeUserSessions({ userId: "gus" })).revoked).toBe(2);
    expect(await audienceRows(one.sessionId)).toHaveLength(0);
    expect(await audienceRows(two.sessionId)).toHaveLength(0);
    expect(provider.stats.revocations).toBe(6);
  });

  it("drops the audience tokens when the provider refuses the refresh token (REAUTH_REQUIRED), whichever refresh finds out", async () => {
    for (const via of ["session", "audience"] as const) {
      const user = `hal-${via}`;
      const { sessionId } = await login(user, [a.url, b.url]);
      await tokens.getToken({ userId: user, sessionId, resource: a.url });
      provider.faults.push({ kind: "status", status: 400, body: JSON.stringify({ error: "invalid_grant" }), headers: { "content-type": "application/json" } });
      const f = await failure(tokens.getToken({ userId: user, sessionId, resource: via === "audience" ? b.url : "", forceRefresh: true }));
      expect(f.reason, via).toBe("REAUTH_REQUIRED");
      await expect.poll(() => audienceRows(sessionId).then((r) => r.length), { timeout: 5000 }).toBe(0);
      expect((await failure(tokens.getToken({ userId: user, sessionId, resource: a.url }))).reason).toBe("REAUTH_REQUIRED");
      const line = svc.logs.lines().find((l) => l.event === "audience_tokens_dropped" && l.sid === sessionRef(sessionId));
      expect(line, via).toMatchObject({ audit: true, reason: "reauth_required", count: 1 });
    }
  });

  it("carries the resource in the RPC log line, the audit line and the metrics, and no token in any of them", async () => {
    const { sessionId, set } = await login("ivy", [a.url]);
    const got = await tokens.getToken({ userId: "ivy", sessionId, resource: a.url });
    const lines = svc.logs.lines();
    expect(lines.find((l) => l.msg === "rpc" && l.rpc === "tokenservice.v1.TokenService/GetToken" && l.resource === a.url)).toBeDefined();
    expect(lines.find((l) => l.event === "audience_refresh" && l.userId === "ivy")).toMatchObject({ audit: true, resource: a.url, outcome: "success" });
    const metrics = await (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();
    expect(metrics).toMatch(new RegExp(`token_service_audience_refresh_total\\{provider="corp",resource="${a.url.replace(/[.:/]/g, "\\$&")}",result="success"\\} [1-9]`));
    for (const secret of [got.token, set.refresh_token, set.access_token]) {
      expect(svc.logs.text()).not.toContain(secret);
      expect(metrics).not.toContain(secret);
    }
  });

  it("sweeps audience tokens whose session is gone (deleted while a refresh was storing them)", async () => {
    const { sessionId } = await login("lee", [a.url]);
    await tokens.getToken({ userId: "lee", sessionId, resource: a.url });
    // What a revoke racing a refresh leaves behind: the session row gone, its audience row still there.
    await svc.app.orm.em.fork().nativeDelete(SessionSchema, { id: sessionId });
    const result = await svc.app.sweeper.sweep();
    expect(result.audienceOrphans).toBe(1);
    expect(await audienceRows(sessionId)).toHaveLength(0);
    expect((await svc.app.sweeper.sweep()).audienceOrphans).toBe(0);
  });

  it("never hands out (and revokes) an audience token obtained while the session was revoked", async () => {
    const { sessionId } = await login("moe", [a.url]);
    // The provider rotates and issues at once, but its answer is slow: the revoke lands in between.
    provider.faults.push({ kind: "slow_answer", ms: 600 });
    const asked = tokens.getToken({ userId: "moe", sessionId, resource: a.url });
    await expect.poll(() => provider.stats.tokenRequests.length).toBe(1);
    await tokens.revokeSession({ userId: "moe", sessionId });
    const revocationsAfterRevoke = provider.stats.revocations;
    expect((await failure(asked)).reason).toBe("SESSION_NOT_FOUND");
    expect(await audienceRows(sessionId)).toHaveLength(0);
    // The rotated refresh token and the new audience token were sent for revocation.
    expect(provider.stats.revocations - revocationsAfterRevoke).toBe(2);
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("takes over the session's lease from a replica that died holding it, then obtains the audience token", async () => {
    const { sessionId } = await login("kai", [a.url]);
    const repo = new SessionRepository(svc.app.orm, "sqlite");
    const row = (await repo.findById(sessionId))!;
    // A "replica" takes the lease for 1.5 s and dies: no refresh, no release.
    const now = new Date();
    expect(await repo.acquireLease(sessionId, row.version, "dead-replica:1", now, new Date(now.getTime() + 1500))).not.toBeNull();
    const started = Date.now();
    const got = await tokens.getToken({ userId: "kai", sessionId, resource: a.url });
    expect(Date.now() - started).toBeGreaterThanOrEqual(1000);
    expect(decodeJwt(got.token).aud).toBe(a.url);
    expect(provider.stats.tokenRequests).toHaveLength(1);
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("re-encrypts audience tokens on key rotation, and obtains a new one for a token it cannot open", async () => {
    const { sessionId } = await login("jon", [a.url]);
    const first = await tokens.getToken({ userId: "jon", sessionId, resource: a.url });
    const repo = new AudienceTokenRepository(svc.app.orm);
    const rotated = new TokenVault(parseKeyRing(`${generateKeySpec("k2")},${svc.keys!}`));
    const report = await rotateAudienceKeys(repo, rotated, { batchSize: 10 });
    expect(report.rotated).toBeGreaterThanOrEqual(1);
    const [row] = await repo.listForSessions([sessionId]);
    expect(row!.keyId).toBe("k2");
    expect(rotated.openAudience(row!)).toBe(first.token);
    // This replica does not have k2: the held token cannot be opened, so a new one is obtained (not an error).
    svc.app.cache.flush();
    provider.resetStats();
    const again = await tokens.getToken({ userId: "jon", sessionId, resource: a.url });
    expect(again.token).not.toBe(first.token);
    expect(provider.stats.tokenRequests).toHaveLength(1);
  });
});

describe("callers' resources", () => {
  it("refuses a caller a resource outside its list with PERMISSION_DENIED (RESOURCE_NOT_ALLOWED), audited, before any lookup", async () => {
    const provider = await startTestProvider();
    const mcp = await startMcpServer(provider.issuer, "A");
    const credential = "gateway-credential-for-resources";
    const svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        callers: [
          { name: "login", token_sha256: createHash("sha256").update("login-credential").digest("hex"), rpcs: ["StoreSession"] },
          { name: "gateway", token_sha256: createHash("sha256").update(credential).digest("hex"), rpcs: ["GetToken"], resources: [mcp.url] },
        ],
      },
    });
    try {
      const login = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url, interceptors: [bearer("login-credential")] }));
      const gateway = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url, interceptors: [bearer(credential)] }));
      const other = "https://other.example.test/mcp";
      const set = await provider.login("max", { resources: [mcp.url, other] });
      const { sessionId } = await login.storeSession({
        userId: "max",
        provider: "corp",
        tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 300n },
        resources: [mcp.url, other],
      });
      expect(decodeJwt((await gateway.getToken({ userId: "max", sessionId, resource: mcp.url })).token).aud).toBe(mcp.url);
      provider.resetStats();
      const f = await failure(gateway.getToken({ userId: "max", sessionId, resource: other }));
      expect(f).toMatchObject({ code: Code.PermissionDenied, reason: "RESOURCE_NOT_ALLOWED", metadata: { resource: other } });
      // Refused before the session is looked up: an unknown session gets the same answer.
      expect((await failure(gateway.getToken({ userId: "nobody", provider: "corp", resource: other }))).reason).toBe("RESOURCE_NOT_ALLOWED");
      expect(provider.stats.tokenRequests).toEqual([]);
      const denied = svc.logs.lines().filter((l) => l.event === "denied" && l.reason === "resource_not_allowed");
      expect(denied[0]).toMatchObject({ audit: true, caller: "gateway", resource: other });
    } finally {
      await svc.close();
      await mcp.close();
      await provider.close();
    }
  });
});

describe("audience tokens in exchange mode (RFC 8693)", () => {
  let provider: TestProvider;
  let a: TestMcpServer;

  beforeAll(async () => {
    provider = await startTestProvider();
    a = await startMcpServer(provider.issuer, "A");
  });
  afterAll(async () => {
    await a?.close();
    await provider?.close();
  });
  beforeEach(() => provider.resetStats());

  for (const target of ["resource", "audience", "both"] as const) {
    it(`exchanges the session's access token for one whose aud is the server (exchange_target ${target})`, async () => {
      const svc = await startService({ dialect: "sqlite", provider, providerConfig: { audience_tokens: "exchange", exchange_target: target } });
      try {
        const tokens = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url }));
        const set = await provider.login("kim");
        // No resources granted: exchange mode has no grant list to check.
        const { sessionId } = await tokens.storeSession({
          userId: "kim",
          provider: "corp",
          tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: BigInt(set.expires_in) },
        });
        const got = await tokens.getToken({ userId: "kim", sessionId, resource: a.url });
        expect(decodeJwt(got.token)).toMatchObject({ aud: a.url, sub: "kim" });
        expect(whoami(await callTool(a.url, got.token, "whoami", {}, 10_000)).sub).toBe("kim");
        expect(provider.stats.tokenRequests).toEqual([
          { grantType: TOKEN_EXCHANGE, resource: target === "audience" ? [] : [a.url], audience: target === "resource" ? [] : [a.url] },
        ]);

        // A target the provider refuses (invalid_target): RESOURCE_NOT_GRANTED, and the session is intact.
        const other = "https://elsewhere.example.test/mcp";
        provider.refusedExchangeTargets.add(other);
        const f = await failure(tokens.getToken({ userId: "kim", sessionId, resource: other }));
        expect(f).toMatchObject({ code: Code.FailedPrecondition, reason: "RESOURCE_NOT_GRANTED" });
        expect((await tokens.getToken({ userId: "kim", sessionId, forceRefresh: true })).token).not.toBe(set.access_token);
        expect((await tokens.listSessions({ userId: "kim" })).sessions[0]!.status).toBe(1);
        expect(provider.stats.invalidGrants).toBe(0);
        provider.refusedExchangeTargets.clear();

        // Another refusal (4xx): EXCHANGE_REFUSED. Neither failure is recorded on the session's row, which
        // still refreshes (and is not held back by the background refresher or waiters as a failing session).
        provider.faults.push({ kind: "status", status: 400, body: JSON.stringify({ error: "invalid_request" }), headers: { "content-type": "application/json" } });
        const refused = await failure(tokens.getToken({ userId: "kim", sessionId, resource: a.url, forceRefresh: true }));
        expect(refused).toMatchObject({ code: Code.FailedPrecondition, reason: "EXCHANGE_REFUSED" });
        const row = await svc.app.orm.em.fork().findOne(SessionSchema, { id: sessionId }, { disableIdentityMap: true });
        expect(row).toMatchObject({ status: "active", lastErrorCode: null, leaseOwner: null });
      } finally {
        await svc.close();
      }
    });
  }

  it("refreshes the session's own token first when it has expired, then exchanges the fresh one", async () => {
    const svc = await startService({ dialect: "sqlite", provider, providerConfig: { audience_tokens: "exchange" } });
    try {
      const tokens = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url }));
      const set = await provider.login("lou");
      // The refreshed subject token lives 2 s: under the 5 s the exchange wants, but it is refreshed only once.
      provider.setAccessTokenTtl(2);
      const { sessionId } = await tokens.storeSession({
        userId: "lou",
        provider: "corp",
        // Stored as already expired: the subject token must be refreshed before it is exchanged.
        tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresAt: { seconds: BigInt(Math.floor(Date.now() / 1000) - 5), nanos: 0 } as never },
      });
      const got = await tokens.getToken({ userId: "lou", sessionId, resource: a.url });
      expect(decodeJwt(got.token).aud).toBe(a.url);
      expect(provider.stats.tokenRequests.map((r) => r.grantType)).toEqual(["refresh_token", TOKEN_EXCHANGE]);
    } finally {
      provider.setAccessTokenTtl(300);
      await svc.close();
    }
  });
});
