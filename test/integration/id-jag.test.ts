import { createHash } from "node:crypto";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { Code } from "@connectrpc/connect";
import { SessionStatus } from "../../gen/tokenservice/v1/token_service_pb.js";
import { AudienceTokenSchema } from "../../src/db/provider-entity.js";
import { SessionSchema } from "../../src/db/session-entity.js";
import { managedEntry, startEnterpriseIdp, startMcpAuthorizationServer, JWT_BEARER, type EnterpriseIdp, type McpAuthorizationServer } from "../helpers/id-jag.js";
import { failure } from "../helpers/failure.js";
import { whoami } from "../helpers/mcp-client.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { TOKEN_EXCHANGE } from "../helpers/oidc-provider.js";
import { connectGrpcClient } from "../helpers/clients.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * An enterprise IdP (oidc-provider, issuing ID-JAGs by token exchange), an
 * MCP authorization server (oidc-provider, redeeming them with the JWT bearer
 * grant), an MCP server (the MCP SDK) that accepts that server's tokens, and
 * one service on SQLite.
 */
describe("enterprise-managed authorization (ID-JAG), SQLite", () => {
  let idp: EnterpriseIdp;
  let as: McpAuthorizationServer;
  let legacy: McpAuthorizationServer;
  let mcp: TestMcpServer;
  let svc: TestService;

  beforeAll(async () => {
    idp = await startEnterpriseIdp({ clientIdAt: () => "mcp-client" });
    [as, legacy] = await Promise.all([startMcpAuthorizationServer(idp.issuer), startMcpAuthorizationServer(idp.issuer, { advertise: false })]);
    mcp = await startMcpServer(as.issuer, "CRM");
    const providers = [idp.configEntry("corp"), managedEntry(as, mcp.url), managedEntry(legacy, "https://legacy.example.test/mcp", "legacy")];
    svc = await startService({ dialect: "sqlite", yaml: { providers } });
  });
  afterAll(async () => {
    await svc?.close();
    await mcp?.close();
    await Promise.all([as?.close(), legacy?.close()]);
    await idp?.close();
  });

  const reset = () => [idp, as, legacy].forEach((p) => p.resetStats());
  const grants = () => ({ idp: idp.stats.tokenRequests.map((r) => r.grantType), as: as.stats.tokenRequests.map((r) => r.grantType) });

  async function signIn(user: string): Promise<{ sessionId: string; idToken: string }> {
    const set = await idp.login(user);
    const { sessionId } = await svc.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
    });
    return { sessionId, idToken: set.id_token };
  }
  const status = async (user: string) => (await svc.client.listSessions({ userId: user })).sessions.map((s) => s.status);
  const derivedRows = (sessionId: string) => svc.app.orm.em.fork().count(AudienceTokenSchema, { sessionId });

  it("hands out an access token the MCP server accepts, with no browser step after the IdP login, and holds it", async () => {
    const { sessionId, idToken } = await signIn("alice");
    reset();
    const answer = await svc.client.getToken({ userId: "alice", provider: "crm" });
    expect(answer.sessionId).toBe(sessionId);
    expect(await whoami(mcp.url, answer.token)).toEqual({ server: "CRM", sub: "alice", aud: mcp.url });
    expect(grants()).toEqual({ idp: [TOKEN_EXCHANGE], as: [JWT_BEARER] });
    expect(idp.stats.tokenRequests[0]).toMatchObject({ resource: [mcp.url], audience: [as.issuer] });
    expect(idp.issued.at(-1)).toMatchObject({ typ: "oauth-id-jag+jwt", claims: { sub: "alice", aud: as.issuer, client_id: "mcp-client", resource: mcp.url } });
    // Held: grpc-js with the session id, and Connect JSON by provider alone, ask nobody.
    expect(await svc.grpcJs.call("GetToken", { user_id: "alice", provider: "crm", session_id: sessionId })).toMatchObject({ token: answer.token, session_id: sessionId });
    expect((await svc.jsonClient.getToken({ userId: "alice", provider: "crm", resource: mcp.url })).token).toBe(answer.token);
    expect(grants()).toEqual({ idp: [TOKEN_EXCHANGE], as: [JWT_BEARER] });
    // Not an ordinary audience token of the IdP session: that provider's own GetToken for the resource is refused.
    expect((await failure(svc.client.getToken({ userId: "alice", provider: "corp", resource: mcp.url }))).reason).toBe("RESOURCE_NOT_GRANTED");
    // Secrets never in the log: the ID token, the ID-JAG and the access token.
    const text = svc.logs.text();
    for (const secret of [idToken, idp.issued.at(-1)!.token, answer.token]) expect(text).not.toContain(secret);
    expect(svc.logs.lines().some((l) => l.event === "audience_refresh" && l.outcome === "success" && l.mode === "derived")).toBe(true);
  });

  it("obtains a new token when the held one is due, and refreshes the IdP session first when its ID token is about to expire", async () => {
    const { sessionId } = await signIn("bruno");
    const first = await svc.client.getToken({ userId: "bruno", provider: "crm" });
    const orm = svc.app.orm.em.fork();
    await orm.nativeUpdate(AudienceTokenSchema, { sessionId }, { issuedAt: new Date(Date.now() - 3600_000), expiresAt: new Date(Date.now() + 30_000) });
    svc.app.cache.flush();
    reset();
    const second = await svc.client.getToken({ userId: "bruno", provider: "crm" });
    expect(second.token).not.toBe(first.token);
    expect(grants()).toEqual({ idp: [TOKEN_EXCHANGE], as: [JWT_BEARER] });
    expect(await whoami(mcp.url, second.token)).toMatchObject({ sub: "bruno" });

    // The stored ID token has 10 s left (< 30 s): the IdP session is refreshed first, then the new ID token exchanged.
    await orm.nativeUpdate(SessionSchema, { id: sessionId }, { idExpiresAt: new Date(Date.now() + 10_000) });
    svc.app.cache.flush();
    reset();
    const third = await svc.client.getToken({ userId: "bruno", provider: "crm", forceRefresh: true });
    expect(third.token).not.toBe(second.token);
    expect(grants()).toEqual({ idp: ["refresh_token", TOKEN_EXCHANGE], as: [JWT_BEARER] });
    expect(await status("bruno")).toEqual([SessionStatus.ACTIVE]);
  });

  it("names the IdP's refusal IDJAG_REFUSED and the authorization server's ASSERTION_REJECTED; the IdP session stays ACTIVE", async () => {
    await signIn("carla");
    reset();
    idp.refusedAudiences.add(as.issuer);
    try {
      const refused = await failure(svc.client.getToken({ userId: "carla", provider: "crm" }));
      expect(refused).toMatchObject({ code: Code.FailedPrecondition, reason: "IDJAG_REFUSED", metadata: { provider: "corp", provider_error: "invalid_grant" } });
    } finally {
      idp.refusedAudiences.delete(as.issuer);
    }
    expect(grants()).toEqual({ idp: [TOKEN_EXCHANGE], as: [] });
    expect(await status("carla")).toEqual([SessionStatus.ACTIVE]);

    as.setRejectAll(true);
    try {
      const rejected = await failure(svc.client.getToken({ userId: "carla", provider: "crm" }));
      expect(rejected).toMatchObject({ code: Code.FailedPrecondition, reason: "ASSERTION_REJECTED", metadata: { provider: "crm", provider_error: "invalid_grant" } });
    } finally {
      as.setRejectAll(false);
    }
    expect(as.rejected.policy).toBe(1);
    expect(await status("carla")).toEqual([SessionStatus.ACTIVE]);
    // Both refusals were passing: the next call succeeds.
    expect((await svc.client.getToken({ userId: "carla", provider: "crm" })).token).not.toBe("");
  });

  it("refuses an authorization server that does not advertise the ID-JAG profile, before the IdP is asked", async () => {
    await signIn("dora");
    reset();
    const refused = await failure(svc.client.getToken({ userId: "dora", provider: "legacy" }));
    expect(refused).toMatchObject({ code: Code.FailedPrecondition, reason: "ID_JAG_NOT_SUPPORTED", metadata: { provider: "legacy" } });
    expect(grants()).toEqual({ idp: [], as: [] });
    expect(legacy.stats.tokenRequests).toEqual([]);
  });

  it("answers NO_IDP_SESSION for a user who has not signed in at the IdP, and refuses ID tokens and other resources", async () => {
    expect(await failure(svc.client.getToken({ userId: "nobody", provider: "crm" }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "NO_IDP_SESSION",
      metadata: { provider: "crm", enterprise_idp: "corp" },
    });
    expect((await failure(svc.client.getToken({ userId: "alice", provider: "crm", resource: "https://other.example.test/" }))).reason).toBe("INVALID_ARGUMENT");
    // It has no sessions of its own: neither stored nor started there.
    const tokens = { accessToken: "at", expiresIn: 300n };
    expect(await failure(svc.client.storeSession({ userId: "alice", provider: "crm", tokens }))).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "provider" } });
    expect(await failure(svc.client.startAuthorization({ userId: "alice", provider: "crm", redirectUri: idp.redirectUri }))).toMatchObject({
      code: Code.InvalidArgument,
      metadata: { field: "provider" },
    });
  });

  it("removes the derived token with the IdP session: RevokeSession, RevokeUserSessions, back-channel logout and REAUTH_REQUIRED", async () => {
    // RevokeSession: the row is gone, the token is revoked at the authorization server, and GetToken says why.
    const a = await signIn("erin");
    await svc.client.getToken({ userId: "erin", provider: "crm" });
    expect(await derivedRows(a.sessionId)).toBe(1);
    reset();
    await svc.client.revokeSession({ userId: "erin", sessionId: a.sessionId });
    expect(await derivedRows(a.sessionId)).toBe(0);
    expect(as.stats.revocations).toBe(1);
    expect((await failure(svc.client.getToken({ userId: "erin", provider: "crm" }))).reason).toBe("NO_IDP_SESSION");
    expect((await failure(svc.client.getToken({ userId: "erin", provider: "crm", sessionId: a.sessionId }))).code).toBe(Code.NotFound);

    // RevokeUserSessions.
    const b = await signIn("erin");
    await svc.client.getToken({ userId: "erin", provider: "crm" });
    expect((await svc.client.revokeUserSessions({ userId: "erin" })).revoked).toBe(1);
    expect(await derivedRows(b.sessionId)).toBe(0);

    // Back-channel logout from the IdP.
    const c = await signIn("fred");
    await svc.client.getToken({ userId: "fred", provider: "crm" });
    const logout = await fetch(`${svc.httpUrl}/oidc/backchannel-logout/corp`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: await idp.logoutToken(idp.clientId, { sub: "fred" }) }),
    });
    expect(logout.status).toBe(200);
    expect(await derivedRows(c.sessionId)).toBe(0);
    expect((await failure(svc.client.getToken({ userId: "fred", provider: "crm" }))).reason).toBe("NO_IDP_SESSION");

    // REAUTH_REQUIRED: the IdP refuses the session's refresh token.
    const d = await signIn("gina");
    await svc.client.getToken({ userId: "gina", provider: "crm" });
    idp.faults.push({ kind: "status", status: 400, body: JSON.stringify({ error: "invalid_grant" }), headers: { "content-type": "application/json" } });
    expect((await failure(svc.client.getToken({ userId: "gina", provider: "corp", forceRefresh: true }))).reason).toBe("REAUTH_REQUIRED");
    await expect.poll(() => derivedRows(d.sessionId)).toBe(0);
    expect(await failure(svc.client.getToken({ userId: "gina", provider: "crm" }))).toMatchObject({ reason: "REAUTH_REQUIRED", metadata: { provider: "corp" } });
  });
});

describe("callers' scopes at an enterprise-managed provider", () => {
  it("needs the enterprise-managed provider and its resource in the caller's scopes, not the IdP", async () => {
    const idp = await startEnterpriseIdp({ clientIdAt: () => "mcp-client" });
    const as = await startMcpAuthorizationServer(idp.issuer);
    const mcp = await startMcpServer(as.issuer, "CRM");
    const sha = (v: string) => createHash("sha256").update(v).digest("hex");
    const callers = [
      { name: "login", token_sha256: sha("login-credential"), rpcs: ["StoreSession"], providers: ["corp"] },
      { name: "crm-gw", token_sha256: sha("crm-credential"), rpcs: ["GetToken"], providers: ["crm"] },
      { name: "corp-gw", token_sha256: sha("corp-credential"), rpcs: ["GetToken"], providers: ["corp"] },
      { name: "other-gw", token_sha256: sha("other-credential"), rpcs: ["GetToken"], resources: ["https://other.example.test/mcp"] },
    ];
    const svc = await startService({ dialect: "sqlite", yaml: { providers: [idp.configEntry("corp"), managedEntry(as, mcp.url)], callers } });
    try {
      const callerClient = (credential: string) => connectGrpcClient(svc.url, { bearer: credential });
      const set = await idp.login("kim");
      const { sessionId } = await callerClient("login-credential").storeSession({
        userId: "kim",
        provider: "corp",
        tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: 300n },
      });
      const got = await callerClient("crm-credential").getToken({ userId: "kim", provider: "crm" });
      expect(got.sessionId).toBe(sessionId);
      expect(await whoami(mcp.url, got.token)).toMatchObject({ sub: "kim" });
      // The IdP session's own token stays out of reach of a caller that has only crm.
      expect((await failure(callerClient("crm-credential").getToken({ userId: "kim", sessionId }))).reason).toBe("PROVIDER_NOT_ALLOWED");
      expect((await failure(callerClient("corp-credential").getToken({ userId: "kim", provider: "crm" }))).reason).toBe("PROVIDER_NOT_ALLOWED");
      expect((await failure(callerClient("other-credential").getToken({ userId: "kim", provider: "crm" }))).reason).toBe("RESOURCE_NOT_ALLOWED");
    } finally {
      await svc.close();
      await mcp.close();
      await as.close();
      await idp.close();
    }
  });
});
