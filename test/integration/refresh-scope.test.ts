import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ProviderService, SessionStatus, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { callTool } from "../../examples/chat-gateway/tools.js";
import { SessionSchema } from "../../src/db/session-entity.js";
import { failure } from "../helpers/failure.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startProtectedResource, type TestProtectedResource } from "../helpers/protected-resource.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * Refresh scope (RFC 6749 §6): a refresh sends no `scope` unless the
 * provider has `refresh_scopes`, and then never more than the session was
 * granted. Proven against a real oidc-provider whose grants are narrower than
 * the requests (a consent that grants a subset; `offline_access` dropped
 * without `prompt=consent`): sessions refresh, rotate without a reuse, and
 * their tokens work at userinfo, at a protected resource and, as audience
 * tokens, at an MCP server. `invalid_scope` never ends a session.
 */

type Tokens = Client<typeof TokenService>;
type Providers = Client<typeof ProviderService>;

const INVALID_SCOPE = { kind: "status" as const, status: 400, body: '{"error":"invalid_scope"}', headers: { "content-type": "application/json" } };

describe("refresh scope", () => {
  let provider: TestProvider;
  let svc: TestService;
  let tokens: Tokens;
  let providers: Providers;
  let resource: TestProtectedResource;
  let mcp: TestMcpServer;

  beforeAll(async () => {
    provider = await startTestProvider({ extraScopes: ["profile"] });
    resource = await startProtectedResource(provider.issuer, { verify: async (token) => (await provider.introspect(token)).active });
    mcp = await startMcpServer(provider.issuer, "A");
    const entry = provider.configEntry();
    svc = await startService({
      dialect: "sqlite",
      yaml: {
        providers: [
          // The configuration that used to break: scopes (asked at authorization) and no refresh_scopes.
          { ...entry, id: "legacy", scopes: ["openid", "offline_access"] },
          { ...entry, id: "down", scopes: ["openid", "offline_access", "profile"], refresh_scopes: ["openid", "profile"] },
          { ...entry, id: "silenced", scopes: ["openid"], refresh_scopes: [] },
        ],
        // The runtime providers registered below live on loopback, as every test server does.
        outbound: { allow_private_networks: true, allow_insecure_http: true },
      },
      overrides: { loadConfig: () => svc.app.config },
    });
    const transport = createGrpcTransport({ baseUrl: svc.url });
    tokens = createClient(TokenService, transport);
    providers = createClient(ProviderService, transport);
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([resource?.close(), mcp?.close()]);
    await provider?.close();
  });
  beforeEach(() => {
    provider.resetStats();
    provider.faults.length = 0;
  });

  /** A login at the provider, stored through StoreSession. */
  async function store(user: string, providerId: string, options: { scope?: string; resources?: string[]; claimScope?: string } = {}) {
    const set = await provider.login(user, { scope: options.scope, resources: options.resources });
    const stored = await tokens.storeSession({
      userId: user,
      provider: providerId,
      tokens: {
        accessToken: set.access_token,
        refreshToken: set.refresh_token,
        idToken: set.id_token,
        expiresIn: BigInt(set.expires_in),
        scope: options.claimScope ?? set.scope,
      },
      resources: options.resources ?? [],
    });
    return { sessionId: stored.sessionId, set };
  }

  /** StartAuthorization, the browser at the provider (consent granting `grantScopes`), CompleteAuthorization. */
  async function connect(user: string, providerId: string, options: { scopes?: string[]; grantScopes?: string[]; resources?: string[] } = {}) {
    const started = await tokens.startAuthorization({
      userId: user,
      provider: providerId,
      redirectUri: provider.redirectUri,
      scopes: options.scopes ?? [],
      resources: options.resources ?? [],
    });
    const callbackUrl = await provider.authorize(started.authorizationUrl, user, { grantScopes: options.grantScopes });
    const done = await tokens.completeAuthorization({ userId: user, callbackUrl });
    return { started, sessionId: done.sessionId };
  }

  /**
   * The session's token works: at userinfo and at a protected resource, or,
   * for a session granted one resource (its refresh names it: RFC 8707), at
   * that MCP server.
   */
  async function works(token: string, mcpResource = false): Promise<void> {
    if (mcpResource) {
      expect(decodeJwt(token).aud).toBe(mcp.url);
      expect((await callTool(mcp.url, token, "whoami", {}, 10_000)).kind).toBe("result");
      return;
    }
    expect(await provider.userinfo(token)).toBe(200);
    const res = await fetch(resource.url, { headers: { authorization: `Bearer ${token}` } });
    expect(res.status).toBe(200);
    await res.body?.cancel();
  }

  /** `times` forced refreshes, each a new token that works; returns the scopes each refresh sent. */
  async function forceRefreshes(user: string, sessionId: string, times = 3, mcpResource = false): Promise<Array<string | undefined>> {
    const from = provider.stats.tokenRequests.length;
    let last = "";
    for (let i = 0; i < times; i++) {
      const got = await tokens.getToken({ userId: user, sessionId, forceRefresh: true });
      expect(got.token).not.toBe(last);
      last = got.token;
      await works(got.token, mcpResource);
    }
    expect(provider.stats.invalidGrants).toBe(0);
    return provider.stats.tokenRequests.slice(from).map((r) => r.scope);
  }

  async function statusOf(user: string, sessionId: string) {
    const listed = await tokens.listSessions({ userId: user });
    const row = await svc.app.orm.em.fork().findOne(SessionSchema, { id: sessionId }, { disableIdentityMap: true });
    return { rpc: listed.sessions.find((s) => s.sessionId === sessionId)?.status, row: row?.status };
  }

  it("warns at start-up and on reload, once per YAML provider that has scopes and no refresh_scopes", async () => {
    const warned = (trigger: string) =>
      svc.logs.lines().filter((l) => l.trigger === trigger && /no longer sent on refresh/.test(String(l.msg))).map((l) => l.provider);
    expect(warned("startup")).toEqual(["legacy"]);
    expect((await svc.app.reload("test-reload")).ok).toBe(true);
    expect(warned("test-reload")).toEqual(["legacy"]);
  });

  it("YAML provider with scopes, a grant without offline_access (StoreSession): refreshes send no scope, rotate, and the tokens work", async () => {
    const { sessionId, set } = await store("ann", "legacy", { scope: "openid" });
    expect(set.scope).toBe("openid");
    expect(await forceRefreshes("ann", sessionId)).toEqual([undefined, undefined, undefined]);
    expect(await statusOf("ann", sessionId)).toEqual({ rpc: SessionStatus.ACTIVE, row: "active" });
  });

  it("audience tokens of a narrower grant: refreshed with resource and no scope, rotating, accepted by the MCP server", async () => {
    const { sessionId } = await store("ben", "legacy", { scope: "openid", resources: [mcp.url] });
    for (let i = 0; i < 3; i++) {
      const got = await tokens.getToken({ userId: "ben", sessionId, resource: mcp.url, forceRefresh: true });
      expect(decodeJwt(got.token).aud).toBe(mcp.url);
      const outcome = await callTool(mcp.url, got.token, "whoami", {}, 10_000);
      expect(outcome.kind).toBe("result");
    }
    // The session's own refresh, after the audience refreshes rotated its refresh token.
    expect(await forceRefreshes("ben", sessionId, 1, true)).toEqual([undefined]);
    expect(provider.stats.tokenRequests.map((r) => [r.resource, r.scope])).toEqual(Array(4).fill([[mcp.url], undefined]));
    expect(provider.stats.invalidGrants).toBe(0);
  });

  it("code flow, consent grants a subset and offline_access is dropped: the session refreshes, narrowed refresh_scopes included", async () => {
    // legacy: asks openid offline_access; without prompt=consent the provider grants openid only.
    const legacy = await connect("cat", "legacy");
    expect(new URL(legacy.started.authorizationUrl).searchParams.get("scope")).toBe("openid offline_access");
    expect(await forceRefreshes("cat", legacy.sessionId)).toEqual([undefined, undefined, undefined]);

    // down: asks openid offline_access profile, the user unticks profile; refresh_scopes [openid, profile] send only openid.
    const down = await connect("dan", "down", { grantScopes: ["openid", "offline_access"] });
    const session = await tokens.getToken({ userId: "dan", sessionId: down.sessionId });
    expect(session.scope.split(" ")).not.toContain("profile");
    expect(await forceRefreshes("dan", down.sessionId)).toEqual(["openid", "openid", "openid"]);
    expect(await statusOf("dan", down.sessionId)).toEqual({ rpc: SessionStatus.ACTIVE, row: "active" });
  });

  it("refresh_scopes narrower than the grant are sent and honoured", async () => {
    const { sessionId } = await store("eve", "down", { scope: "openid offline_access profile" });
    expect(await forceRefreshes("eve", sessionId, 2)).toEqual(["openid profile", "openid profile"]);
    // The provider issued the narrower token, and the session's scope follows the token response.
    expect((await tokens.getToken({ userId: "eve", sessionId })).scope).toBe("openid profile");
    const row = await svc.app.orm.em.fork().findOne(SessionSchema, { id: sessionId }, { disableIdentityMap: true });
    expect(row?.scope).toBe("openid profile");
  });

  it("audience tokens with refresh_scopes: the resource and the granted refresh_scopes are sent, and the token works", async () => {
    const { sessionId } = await store("eli", "down", { scope: "openid offline_access", resources: [mcp.url] });
    for (let i = 0; i < 2; i++) {
      const got = await tokens.getToken({ userId: "eli", sessionId, resource: mcp.url, forceRefresh: true });
      expect((await callTool(mcp.url, got.token, "whoami", {}, 10_000)).kind).toBe("result");
    }
    // profile was not granted: only openid goes, beside the resource, and the provider takes it.
    expect(provider.stats.tokenRequests.map((r) => [r.resource, r.scope])).toEqual([
      [[mcp.url], "openid"],
      [[mcp.url], "openid"],
    ]);
    expect(provider.stats.invalidGrants).toBe(0);
    expect(await statusOf("eli", sessionId)).toEqual({ rpc: SessionStatus.ACTIVE, row: "active" });
  });

  it("a scoped refresh answered invalid_scope is tried once more without scope", async () => {
    // The caller claimed profile, which the grant does not hold: the provider refuses "openid profile".
    const { sessionId } = await store("fay", "down", { scope: "openid offline_access", claimScope: "openid offline_access profile" });
    const got = await tokens.getToken({ userId: "fay", sessionId, forceRefresh: true });
    await works(got.token);
    expect(provider.stats.tokenRequests.map((r) => r.scope)).toEqual(["openid profile", undefined]);
    expect(provider.stats.invalidGrants).toBe(0);
    expect(svc.logs.lines().some((l) => l.provider === "down" && /invalid_scope.*without scope/.test(String(l.msg)))).toBe(true);
  });

  it("invalid_scope never sets REAUTH_REQUIRED: the session is kept and refreshes later", async () => {
    const { sessionId } = await store("gus", "legacy", { resources: [mcp.url] });
    // Without a scope sent: UNAVAILABLE, and no retry of its own.
    provider.faults.push(INVALID_SCOPE);
    expect(await failure(tokens.getToken({ userId: "gus", sessionId, forceRefresh: true }))).toMatchObject({ code: Code.Unavailable });
    expect(provider.stats.refreshes).toBe(1);
    // Kept: its status says its refreshes are failing (docs/connection-health.md#session-status), not that it needs a login.
    expect(await statusOf("gus", sessionId)).toEqual({ rpc: SessionStatus.REFRESH_FAILING, row: "active" });
    // An audience refresh answered invalid_scope: the same.
    provider.faults.push(INVALID_SCOPE);
    expect((await failure(tokens.getToken({ userId: "gus", sessionId, resource: mcp.url, forceRefresh: true }))).code).toBe(Code.Unavailable);
    expect(await statusOf("gus", sessionId)).toEqual({ rpc: SessionStatus.REFRESH_FAILING, row: "active" });
    expect(await forceRefreshes("gus", sessionId, 1, true)).toEqual([undefined]);
    expect(await statusOf("gus", sessionId)).toEqual({ rpc: SessionStatus.ACTIVE, row: "active" });

    // With a scope sent, refused twice (scoped, then unscoped): still kept.
    const down = await store("hal", "down");
    const before = provider.stats.refreshes;
    provider.faults.push(INVALID_SCOPE, INVALID_SCOPE);
    expect((await failure(tokens.getToken({ userId: "hal", sessionId: down.sessionId, forceRefresh: true }))).code).toBe(Code.Unavailable);
    expect(provider.stats.refreshes - before).toBe(2);
    expect(await statusOf("hal", down.sessionId)).toEqual({ rpc: SessionStatus.REFRESH_FAILING, row: "active" });
    expect(await forceRefreshes("hal", down.sessionId, 1)).toEqual(["openid"]);
    // invalid_grant still ends it.
    provider.faults.push({ ...INVALID_SCOPE, body: '{"error":"invalid_grant"}' });
    expect((await failure(tokens.getToken({ userId: "hal", sessionId: down.sessionId, forceRefresh: true }))).reason).toBe("REAUTH_REQUIRED");
    expect(await statusOf("hal", down.sessionId)).toEqual({ rpc: SessionStatus.REAUTH_REQUIRED, row: "reauth_required" });
  });

  it("runtime providers (RegisterProvider): scopes are not sent on refresh; refresh_scopes are stored, shown and narrowed", async () => {
    await providers.registerProvider({
      id: "rt-public",
      issuer: provider.issuer,
      clientId: provider.publicClientId,
      clientAuthMethod: "none",
      redirectUris: [provider.redirectUri],
      scopes: ["openid", "offline_access"],
      allowInsecureHttp: true,
    });
    const registered = await providers.registerProvider({
      id: "rt-down",
      issuer: provider.issuer,
      clientId: provider.clientId,
      clientSecret: provider.clientSecret,
      redirectUris: [provider.redirectUri],
      scopes: ["openid", "offline_access", "profile"],
      refreshScopes: ["openid", "profile"],
      allowInsecureHttp: true,
    });
    expect(registered.provider).toMatchObject({ scopes: ["openid", "offline_access", "profile"], refreshScopes: ["openid", "profile"] });
    const listed = (await providers.listProviders({})).providers;
    expect(listed.find((p) => p.id === "rt-public")?.refreshScopes).toEqual([]);
    expect(listed.find((p) => p.id === "down")?.refreshScopes).toEqual(["openid", "profile"]);

    // A public client asking openid offline_access, granted openid: refreshes without scope.
    const pub = await connect("ida", "rt-public");
    expect(await forceRefreshes("ida", pub.sessionId)).toEqual([undefined, undefined, undefined]);
    // A confidential client whose user unticked profile: refresh_scopes narrowed to openid.
    const conf = await connect("jon", "rt-down", { grantScopes: ["openid", "offline_access"] });
    expect(await forceRefreshes("jon", conf.sessionId)).toEqual(["openid", "openid", "openid"]);
    // An MCP client of the code flow: its audience tokens refresh without the provider's scopes.
    const mcpClient = await connect("kim", "rt-public", { resources: [mcp.url] });
    provider.resetStats();
    for (let i = 0; i < 2; i++) {
      const got = await tokens.getToken({ userId: "kim", sessionId: mcpClient.sessionId, resource: mcp.url, forceRefresh: true });
      expect((await callTool(mcp.url, got.token, "whoami", {}, 10_000)).kind).toBe("result");
    }
    expect(provider.stats.tokenRequests.map((r) => [r.resource, r.scope])).toEqual([
      [[mcp.url], undefined],
      [[mcp.url], undefined],
    ]);
    expect(await forceRefreshes("kim", mcpClient.sessionId, 2, true)).toEqual([undefined, undefined]);
    expect(await statusOf("kim", mcpClient.sessionId)).toEqual({ rpc: SessionStatus.ACTIVE, row: "active" });
  });
});
