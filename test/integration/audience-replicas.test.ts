import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { createChatGateway, type ChatGateway, type GatewayLogEntry } from "../../examples/chat-gateway/gateway.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { AudienceTokenSchema } from "../../src/db/provider-entity.js";
import { SessionSchema } from "../../src/db/session-entity.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/**
 * The chat gateway calls tools on two MCP servers for one user, through three
 * replicas on one PostgreSQL. Each call asks GetToken for a token whose
 * audience is that server. While the audience tokens are missing or due,
 * the whole burst costs one provider call per audience, never two at once for
 * one session (they share its refresh token), and no invalid_grant.
 */
describe("tool calls on two MCP servers over three replicas (PostgreSQL)", () => {
  let provider: TestProvider;
  let a: TestMcpServer;
  let b: TestMcpServer;
  let c: TestMcpServer;
  const replicas: TestService[] = [];
  const gateways: Array<{ gateway: ChatGateway; url: string }> = [];
  const logs: GatewayLogEntry[] = [];

  beforeAll(async () => {
    provider = await startTestProvider();
    [a, b, c] = await Promise.all([startMcpServer(provider.issuer, "A"), startMcpServer(provider.issuer, "B"), startMcpServer(provider.issuer, "C")]);
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("audience");
    for (const id of ["r1", "r2", "r3"]) {
      replicas.push(await startService({ dialect: "postgresql", databaseUrl, keys, provider, overrides: { replicaId: id } }));
    }
    for (const r of replicas) {
      const gateway = createChatGateway({
        tokenServiceUrl: r.url,
        upstreamUrl: "http://127.0.0.1:9",
        provider: "corp",
        toolServers: { a: a.url, b: b.url, c: c.url },
        log: (e) => logs.push(e),
      });
      gateways.push({ gateway, url: await gateway.listen(0) });
    }
  });
  afterAll(async () => {
    await Promise.all(gateways.map((g) => g.gateway.close()));
    await Promise.all(replicas.map((r) => r.close()));
    await Promise.all([a, b, c].map((s) => s?.close()));
    await provider?.close();
  });

  async function toolCall(gateway: string, server: string, user: string) {
    const res = await fetch(`${gateway}/v1/tools/${server}/whoami`, {
      method: "POST",
      headers: { "x-user-id": user, "content-type": "application/json" },
      body: "{}",
    });
    const body = (await res.json()) as { result?: { content: Array<{ text: string }> }; error?: { code: string } };
    return { status: res.status, body, who: body.result ? (JSON.parse(body.result.content[0]!.text) as { server: string; sub: string; aud: string }) : undefined };
  }

  it("costs one provider call per audience while the tokens are missing or due, with 200 concurrent calls and no invalid_grant", async () => {
    const set = await provider.login("uma", { resources: [a.url, b.url] });
    // Audience tokens live 120 s here: due (inside the 60 s refresh margin) only a minute after they are issued, so
    // nothing becomes due within a round however slowly a loaded machine serves it. Round 2 makes them due by their
    // stored expiry instead of a wait.
    provider.setAccessTokenTtl(120);
    await createClient(TokenService, createGrpcTransport({ baseUrl: replicas[0]!.url })).storeSession({
      userId: "uma",
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: BigInt(set.expires_in) },
      resources: [a.url, b.url],
    });

    const storm = async () =>
      Promise.all(Array.from({ length: 200 }, (_, i) => toolCall(gateways[i % 3]!.url, i % 2 === 0 ? "a" : "b", "uma")));

    for (const round of [1, 2]) {
      provider.resetStats();
      const answers = await storm();
      for (const [i, answer] of answers.entries()) {
        expect(answer.status, `round ${round}, call ${i}: ${JSON.stringify(answer.body)}; refused by A ${JSON.stringify(a.refused)}, by B ${JSON.stringify(b.refused)}`).toBe(200);
        // Each server saw a token for itself, for this user.
        const server = i % 2 === 0 ? a : b;
        expect(answer.who).toEqual({ server: i % 2 === 0 ? "A" : "B", sub: "uma", aud: server.url });
      }
      const requests = provider.stats.tokenRequests;
      expect(requests.map((r) => r.resource[0]).sort(), `round ${round}`).toEqual([a.url, b.url].sort());
      expect(requests.every((r) => r.grantType === "refresh_token")).toBe(true);
      expect(provider.stats.invalidGrants).toBe(0);
      // Never two refreshes at once: both audiences use the session's one refresh token, in turn.
      expect(provider.stats.maxConcurrentRefreshes).toBe(1);
      if (round === 1) {
        // Due for round 2: stored as issued an hour ago and expiring in 30 s, inside the 60 s margin (the tokens
        // themselves stay valid for the MCP servers), and the replicas' caches dropped so that they read the rows again.
        const now = Date.now();
        const due = { issuedAt: new Date(now - 3600_000), expiresAt: new Date(now + 30_000) };
        const affected = await replicas[0]!.app.orm.em.fork().nativeUpdate(AudienceTokenSchema, {}, due);
        expect(affected).toBe(2);
        for (const r of replicas) r.app.cache.flush();
      }
    }
    expect(a.refused).toEqual({});
    expect(b.refused).toEqual({});
    // The work was spread: every replica answered GetToken calls for both servers.
    for (const r of replicas) {
      const asked = r.logs.lines().filter((l) => l.msg === "rpc" && l.rpc === "tokenservice.v1.TokenService/GetToken" && l.code === "ok");
      expect(new Set(asked.map((l) => l.resource))).toEqual(new Set([a.url, b.url]));
    }
  });

  it("answers 403 for a server the user's login does not cover, and never asks the provider", async () => {
    provider.resetStats();
    const answer = await toolCall(gateways[1]!.url, "c", "uma");
    expect(answer.status).toBe(403);
    expect(answer.body.error?.code).toBe("tool_server_not_connected");
    expect(provider.stats.tokenRequests).toEqual([]);
    expect(c.calls).toEqual([]);
    expect(logs.find((l) => l.tool_server === "c")).toMatchObject({ status: 403, token_error: "FailedPrecondition/RESOURCE_NOT_GRANTED" });
  });

  it("revokes on one replica: every replica stops handing out the audience tokens, and the rows are gone", async () => {
    const tokens = createClient(TokenService, createGrpcTransport({ baseUrl: replicas[2]!.url }));
    const [session] = (await tokens.listSessions({ userId: "uma" })).sessions;
    expect(session!.audienceTokens.map((t) => t.resource).sort()).toEqual([a.url, b.url].sort());
    expect((await tokens.revokeUserSessions({ userId: "uma" })).revoked).toBe(1);
    for (const g of gateways) {
      const answer = await toolCall(g.url, "a", "uma");
      expect(answer.status).toBe(401);
      expect(answer.body.error?.code).toBe("no_session");
    }
    const left = await replicas[0]!.app.orm.em.fork().count(AudienceTokenSchema, {});
    expect(left).toBe(0);
    // The orphan sweep, on PostgreSQL: an audience row whose session row is gone is removed.
    const set = await provider.login("vic", { resources: [a.url] });
    const { sessionId } = await tokens.storeSession({
      userId: "vic",
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 300n },
      resources: [a.url],
    });
    await tokens.getToken({ userId: "vic", sessionId, resource: a.url });
    await replicas[0]!.app.orm.em.fork().nativeDelete(SessionSchema, { id: sessionId });
    expect((await replicas[1]!.app.sweeper.sweep()).audienceOrphans).toBe(1);
    expect(await replicas[0]!.app.orm.em.fork().count(AudienceTokenSchema, {})).toBe(0);
  });

  it("answers 404 for an unknown tool server, and 400 for arguments that are not a JSON object", async () => {
    const unknown = await fetch(`${gateways[0]!.url}/v1/tools/nope/whoami`, { method: "POST", headers: { "x-user-id": "uma" } });
    expect(unknown.status).toBe(404);
    const bad = await fetch(`${gateways[0]!.url}/v1/tools/a/whoami`, { method: "POST", headers: { "x-user-id": "uma" }, body: "[1,2]" });
    expect(bad.status).toBe(400);
    expect(((await bad.json()) as { error: { code: string } }).error.code).toBe("arguments_invalid");
  });
});
