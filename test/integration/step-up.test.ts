import { setTimeout as sleep } from "node:timers/promises";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ProviderService, SessionStatus, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { callTool } from "../../examples/chat-gateway/tools.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { grpcJsRawClient } from "../helpers/clients.js";
import { failure } from "../helpers/failure.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/** The test IdP and MCP servers are on loopback over plain http: the operator allows both for runtime providers. */
const OUTBOUND = { outbound: { allow_private_networks: true, allow_insecure_http: true } };

/**
 * Scopes from a tool server's challenge and step-up in place, over two
 * replicas on one PostgreSQL: a real MCP server (the SDK's) that answers 401
 * with a scope and 403 insufficient_scope for its `admin` tool, and a real
 * oidc-provider with refresh-token rotation.
 */
describe("scopes and step-up (PostgreSQL, two replicas)", () => {
  let provider: TestProvider;
  let mcp: TestMcpServer;
  let a: TestService;
  let b: TestService;
  let tokensA: Client<typeof TokenService>;
  let tokensB: Client<typeof TokenService>;
  let admin: Client<typeof ProviderService>;
  const secrets = new Set<string>();

  async function register(id: string, resourceUrl: string, scopes: string[] = []) {
    const { provider: registered } = await admin.registerProvider({
      id,
      resourceUrl,
      clientId: provider.clientId,
      clientSecret: provider.clientSecret,
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
      scopes,
    });
    return registered!;
  }

  /** The whole code flow for a user at "tools": start on A, the browser, complete on A. */
  async function connect(userId: string) {
    const started = await tokensA.startAuthorization({ userId, provider: "tools", redirectUri: provider.redirectUri });
    secrets.add(started.state);
    const done = await tokensA.completeAuthorization({ userId, callbackUrl: await provider.authorize(started.authorizationUrl, userId) });
    expect(done.steppedUp).toBe(false);
    return done.sessionId;
  }

  beforeAll(async () => {
    provider = await startTestProvider({ resourceScopes: ["mcp:admin"] });
    mcp = await startMcpServer(provider.issuer, "A", {
      challengeScope: "mcp:tools",
      scopesSupported: ["mcp:tools", "mcp:read"],
      toolScopes: { admin: ["mcp:tools", "mcp:admin"] },
    });
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("stepup");
    a = await startService({ dialect: "postgresql", databaseUrl, keys, yaml: OUTBOUND, overrides: { replicaId: "replica-a" } });
    b = await startService({ dialect: "postgresql", databaseUrl, keys, yaml: OUTBOUND, overrides: { replicaId: "replica-b" } });
    tokensA = a.client;
    tokensB = createClient(TokenService, createGrpcTransport({ baseUrl: b.url }));
    admin = createClient(ProviderService, createGrpcTransport({ baseUrl: a.url }));
    await register("tools", mcp.url);
    // Both replicas know the provider (B within a second, through the database).
    for (let i = 0; i < 100 && !(await createClient(ProviderService, createGrpcTransport({ baseUrl: b.url })).listProviders({})).providers.some((p) => p.id === "tools"); i++) await sleep(20);
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await mcp?.close();
    await provider?.close();
  });

  it("records the 401 challenge's scope and the metadata's scopes_supported, and asks for them in that order", async () => {
    const listed = (await admin.listProviders({})).providers.find((p) => p.id === "tools")!;
    expect(listed.challengeScopes).toEqual(["mcp:tools"]);
    expect(listed.scopesSupported).toEqual(["mcp:tools", "mcp:read"]);
    const scopeOf = (url: string) => new URL(url).searchParams.get("scope");

    // 1. the challenge's scope (the caller's challenge first, else the one recorded at registration).
    const fromCaller = await tokensA.startAuthorization({ userId: "ann", provider: "tools", redirectUri: provider.redirectUri, challenge: 'Bearer scope="mcp:read"' });
    expect(fromCaller.scopes).toEqual(["mcp:read", "offline_access"]);
    expect(scopeOf(fromCaller.authorizationUrl)).toBe("mcp:read offline_access");
    const fromRecorded = await tokensA.startAuthorization({ userId: "ann", provider: "tools", redirectUri: provider.redirectUri });
    expect(fromRecorded.scopes).toEqual(["mcp:tools", "offline_access"]);

    // 2. scopes_supported, for a resource whose challenge names no scope.
    const quiet = await startMcpServer(provider.issuer, "Q", { scopesSupported: ["q:read"] });
    // 3. the provider's scopes, then the OpenID Connect default, for a resource with neither.
    const bare = await startMcpServer(provider.issuer, "B", { scopesSupported: [] });
    try {
      const q = await register("quiet", quiet.url);
      expect(q.challengeScopes).toEqual([]);
      expect(q.scopesSupported).toEqual(["q:read"]);
      expect((await tokensA.startAuthorization({ userId: "ann", provider: "quiet", redirectUri: provider.redirectUri })).scopes).toEqual(["q:read", "offline_access"]);
      await register("bare", bare.url, ["profile"]);
      await register("bare-default", bare.url);
      expect((await tokensA.startAuthorization({ userId: "ann", provider: "bare", redirectUri: provider.redirectUri })).scopes).toEqual(["profile"]);
      const fallback = await tokensA.startAuthorization({ userId: "ann", provider: "bare-default", redirectUri: provider.redirectUri });
      expect(fallback.scopes).toEqual(["openid", "offline_access"]);
      expect(scopeOf(fallback.authorizationUrl)).toBe("openid offline_access");
      // (4. "nothing", for an authorization server that is not OpenID Connect: test/unit/challenge.test.ts.)
    } finally {
      await Promise.all([quiet.close(), bare.close()]);
    }
  });

  it("steps a session up in place: same id, new scopes on the other replica, audience tokens dropped, the admin tool then works", async () => {
    const sessionId = await connect("sam");
    const audience = await tokensB.getToken({ userId: "sam", sessionId, resource: mcp.url });
    secrets.add(audience.token);
    expect(await callTool(mcp.url, audience.token, "whoami", {}, 10_000)).toMatchObject({ kind: "result" });
    const refusal = await callTool(mcp.url, audience.token, "admin", {}, 10_000);
    expect(refusal).toMatchObject({ kind: "refused", status: 403 });
    const challenge = (refusal as { challenge?: string }).challenge!;
    expect(challenge).toContain('error="insufficient_scope"');
    expect((await tokensA.listSessions({ userId: "sam" })).sessions[0]!.audienceTokens).toHaveLength(1);

    // The step-up starts on B (grpc-js) and completes on A (Connect).
    const raw = grpcJsRawClient(b.url);
    let started;
    try {
      const outcome = await raw.call(TokenService, TokenService.method.startAuthorization, {
        userId: "sam",
        provider: "tools",
        redirectUri: provider.redirectUri,
        challenge,
        sessionId,
      });
      expect(outcome.code).toBe(0);
      started = outcome.response!;
    } finally {
      raw.close();
    }
    secrets.add(started.state);
    expect(started.scopes).toEqual(expect.arrayContaining(["mcp:tools", "mcp:admin", "offline_access"]));
    // B reads (and caches) the session just before the step-up completes on A.
    const before = await tokensB.getToken({ userId: "sam", sessionId });
    secrets.add(before.token);
    expect(before.scope.split(" ")).not.toContain("mcp:admin");
    expect((await tokensB.getToken({ userId: "sam", sessionId })).token).toBe(before.token);
    const revocations = provider.stats.revocations;
    const done = await tokensA.completeAuthorization({ userId: "sam", callbackUrl: await provider.authorize(started.authorizationUrl, "sam") });
    expect(done).toMatchObject({ sessionId, steppedUp: true, provider: "tools" });
    // The replaced refresh token was revoked at the provider.
    expect(provider.stats.revocations).toBeGreaterThan(revocations);

    const sessions = (await tokensA.listSessions({ userId: "sam" })).sessions;
    expect(sessions.map((s) => s.sessionId)).toEqual([sessionId]);
    expect(sessions[0]!.audienceTokens).toEqual([]);
    // B cached the session before: its cache must not serve the old token (the change reached it through PostgreSQL).
    let after = await tokensB.getToken({ userId: "sam", sessionId });
    for (let i = 0; i < 250 && !after.scope.split(" ").includes("mcp:admin"); i++) {
      await sleep(20);
      after = await tokensB.getToken({ userId: "sam", sessionId });
    }
    secrets.add(after.token);
    expect(after.scope.split(" ")).toContain("mcp:admin");
    expect(after.token).not.toBe(before.token);
    expect(after.sessionId).toBe(sessionId);
    const stepped = await tokensB.getToken({ userId: "sam", sessionId, resource: mcp.url });
    secrets.add(stepped.token);
    expect(stepped.token).not.toBe(audience.token);
    expect(await callTool(mcp.url, stepped.token, "admin", {}, 10_000)).toMatchObject({ kind: "result" });
    // And the session keeps refreshing with the new refresh token (rotation on: a stale one would be invalid_grant).
    expect((await tokensA.getToken({ userId: "sam", sessionId, forceRefresh: true })).scope).toContain("mcp:admin");

    const audit = a.logs.lines().find((l) => l.event === "step_up");
    expect(audit).toMatchObject({ audit: true, userId: "sam", revived: false, audienceTokens: 1 });
  });

  it("waits for a refresh that holds the lease, and the refresh's result does not overwrite the step-up", async () => {
    const sessionId = await connect("ned");
    const started = await tokensA.startAuthorization({
      userId: "ned",
      provider: "tools",
      redirectUri: provider.redirectUri,
      sessionId,
      challenge: 'Bearer error="insufficient_scope", scope="mcp:admin"',
    });
    secrets.add(started.state);
    const callbackUrl = await provider.authorize(started.authorizationUrl, "ned");
    // A refresh on B that the provider answers slowly: B holds the session's lease meanwhile.
    provider.faults.push({ kind: "delay", ms: 1500 });
    const refreshing = tokensB.getToken({ userId: "ned", sessionId, forceRefresh: true });
    while (provider.inflightTokenRequests() === 0) await sleep(5);
    const done = await tokensA.completeAuthorization({ userId: "ned", callbackUrl });
    const refreshed = await refreshing;
    secrets.add(refreshed.token);
    expect(refreshed.scope.split(" ")).not.toContain("mcp:admin");
    expect(done).toMatchObject({ sessionId, steppedUp: true });
    // The step-up was written after the refresh: the session has the new scope, and its (new grant's) refresh token works.
    const now = await tokensA.getToken({ userId: "ned", sessionId, forceRefresh: true });
    secrets.add(now.token);
    expect(now.scope.split(" ")).toContain("mcp:admin");
    expect((await tokensB.listSessions({ userId: "ned" })).sessions).toHaveLength(1);
  });

  it("refuses a step-up that signed in another account, and keeps the session as it was", async () => {
    const ask = { userId: "otto", provider: "tools", redirectUri: provider.redirectUri };
    const first = await tokensA.startAuthorization({ ...ask, scopes: ["openid", "offline_access", "mcp:tools"] });
    const { sessionId } = await tokensA.completeAuthorization({ userId: "otto", callbackUrl: await provider.authorize(first.authorizationUrl, "otto") });
    const before = await tokensA.getToken({ userId: "otto", sessionId });
    secrets.add(before.token);
    const up = await tokensA.startAuthorization({ ...ask, sessionId, challenge: 'Bearer error="insufficient_scope", scope="mcp:admin"' });
    expect(up.scopes).toContain("openid");
    // At the provider, someone signs in as eve.
    const refused = await failure(tokensA.completeAuthorization({ userId: "otto", callbackUrl: await provider.authorize(up.authorizationUrl, "eve") }));
    expect(refused).toMatchObject({ code: Code.FailedPrecondition, reason: "INVALID_CALLBACK", metadata: { check: "other_account" } });
    const still = await tokensB.getToken({ userId: "otto", sessionId });
    expect(still.token).toBe(before.token);
    expect(still.scope.split(" ")).not.toContain("mcp:admin");
  });

  it("revives a REAUTH_REQUIRED session in place", async () => {
    const sessionId = await connect("rita");
    provider.faults.push({ kind: "status", status: 400, body: JSON.stringify({ error: "invalid_grant" }), headers: { "content-type": "application/json" } });
    expect((await failure(tokensA.getToken({ userId: "rita", sessionId, forceRefresh: true }))).reason).toBe("REAUTH_REQUIRED");
    expect((await tokensB.listSessions({ userId: "rita" })).sessions[0]!.status).toBe(SessionStatus.REAUTH_REQUIRED);

    const started = await tokensB.startAuthorization({ userId: "rita", provider: "tools", redirectUri: provider.redirectUri, sessionId });
    expect(started.scopes).toEqual(expect.arrayContaining(["mcp:tools"]));
    const done = await tokensB.completeAuthorization({ userId: "rita", callbackUrl: await provider.authorize(started.authorizationUrl, "rita") });
    expect(done).toMatchObject({ sessionId, steppedUp: true });
    const [session] = (await tokensA.listSessions({ userId: "rita" })).sessions;
    expect(session).toMatchObject({ sessionId, status: SessionStatus.ACTIVE, reauthReason: "", refreshable: true });
    const token = await tokensA.getToken({ userId: "rita", sessionId, resource: mcp.url });
    secrets.add(token.token);
    expect(await callTool(mcp.url, token.token, "whoami", {}, 10_000)).toMatchObject({ kind: "result" });
  });

  it("allows max_step_ups_per_hour step-ups of a session across replicas, then STEP_UP_LIMIT", async () => {
    const sessionId = await connect("lou");
    const ask = { userId: "lou", provider: "tools", redirectUri: provider.redirectUri, sessionId, challenge: 'Bearer error="insufficient_scope", scope="mcp:admin"' };
    await tokensA.startAuthorization(ask);
    await tokensB.startAuthorization(ask);
    await a.jsonClient.startAuthorization(ask);
    const connect4th = await failure(tokensB.startAuthorization(ask));
    expect(connect4th).toMatchObject({ code: Code.FailedPrecondition, reason: "STEP_UP_LIMIT" });
    const raw = grpcJsRawClient(a.url);
    try {
      expect(await raw.call(TokenService, TokenService.method.startAuthorization, ask)).toMatchObject({ code: Code.FailedPrecondition, reason: "STEP_UP_LIMIT" });
    } finally {
      raw.close();
    }
    // Another session of the same user has its own count.
    const other = await connect("lou");
    expect((await tokensA.startAuthorization({ ...ask, sessionId: other })).scopes).toContain("mcp:admin");
  });

  it("refuses bad challenges, foreign resource metadata and other users' sessions, without counting a step-up", async () => {
    const sessionId = await connect("bea");
    const base = { userId: "bea", provider: "tools", redirectUri: provider.redirectUri, sessionId };
    const bad = [
      "Basic realm=x",
      'Bearer scope="zq-marker',
      'Bearer scope="a", scope="b"',
      `Bearer scope="${"x".repeat(5000)}"`,
      'Bearer error="invalid_request"',
      "Bearer scope=\"caf\u00e9\"",
      `Bearer resource_metadata="http://attacker.example/.well-known/oauth-protected-resource", scope="mcp:admin"`,
    ];
    const raw = grpcJsRawClient(b.url);
    try {
      for (const challenge of bad) {
        const viaConnect = await failure(tokensA.startAuthorization({ ...base, challenge }));
        expect(viaConnect, challenge).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "challenge" } });
        // The message names the problem, never the value (a tool server wrote it).
        for (const part of ["attacker", "zq-marker", "xxxxxxxx", "caf"]) expect(viaConnect.message).not.toContain(part);
        const viaGrpcJs = await raw.call(TokenService, TokenService.method.startAuthorization, { ...base, challenge });
        expect(viaGrpcJs).toMatchObject({ code: Code.InvalidArgument, reason: "INVALID_ARGUMENT", metadata: { field: "challenge" } });
      }
    } finally {
      raw.close();
    }
    // The recorded resource_metadata is accepted as it is.
    const own = `Bearer error="insufficient_scope", scope="mcp:admin", resource_metadata="${new URL("/.well-known/oauth-protected-resource/mcp", mcp.url).href}"`;
    expect((await tokensA.startAuthorization({ ...base, challenge: own })).scopes).toContain("mcp:admin");
    expect((await failure(tokensA.startAuthorization({ ...base, userId: "mallory" }))).code).toBe(Code.NotFound);
    await register("tools-2", mcp.url);
    expect((await failure(tokensA.startAuthorization({ ...base, provider: "tools-2" }))).code).toBe(Code.NotFound);
    // Two step-ups left: none of the refusals counted.
    await tokensA.startAuthorization(base);
    await tokensA.startAuthorization(base);
    expect((await failure(tokensA.startAuthorization(base))).reason).toBe("STEP_UP_LIMIT");
  });

  it("never writes a token or a state to the logs", () => {
    expect(secrets.size).toBeGreaterThan(5);
    for (const svc of [a, b]) {
      const text = svc.logs.text();
      for (const s of secrets) expect(text).not.toContain(s);
    }
  });
});
