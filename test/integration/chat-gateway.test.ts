import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { setTimeout as sleep } from "node:timers/promises";
import { createHash } from "node:crypto";
import { Code, ConnectError, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { createChatGateway, type ChatGateway, type GatewayLogEntry } from "../../examples/chat-gateway/gateway.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { startTestProvider, type TestProvider, type TestTokenSet } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { loginAndStore } from "../helpers/session-login.js";

const LOGIN_URL = "https://login.example.test/start";
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

function bearer(credential: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${credential}`);
    return next(req);
  };
}
const SSE_EVENTS = ["Hel", "lo", ", world"].map((content, i) =>
  JSON.stringify({ id: "chatcmpl-1", object: "chat.completion.chunk", choices: [{ index: 0, delta: { content }, finish_reason: i === 2 ? "stop" : null }] }),
);
const COMPLETION = {
  id: "chatcmpl-1",
  object: "chat.completion",
  model: "test-model",
  choices: [{ index: 0, message: { role: "assistant", content: "Hello, world" }, finish_reason: "stop" }],
};

/** What the fake model server saw of one request. */
interface SeenRequest {
  path: string;
  authorization: string | undefined;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** An OpenAI-compatible stand-in: records each request, answers JSON or SSE in delayed chunks. */
async function startUpstream() {
  const seen: SeenRequest[] = [];
  let lastSseWriteAt = 0;
  const server = http.createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const chunk of req) chunks.push(chunk as Buffer);
    const body = Buffer.concat(chunks).toString("utf8");
    seen.push({ path: req.url ?? "", authorization: req.headers.authorization, headers: req.headers, body });
    if (req.url === "/v1/models") {
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ object: "list", data: [{ id: "test-model", object: "model" }] }));
      return;
    }
    if ((JSON.parse(body) as { stream?: boolean }).stream) {
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      for (const event of [...SSE_EVENTS, "[DONE]"]) {
        res.write(`data: ${event}\n\n`);
        lastSseWriteAt = performance.now();
        await sleep(60);
      }
      res.end();
      return;
    }
    res.writeHead(200, { "content-type": "application/json", "set-cookie": "upstream=1" }).end(JSON.stringify(COMPLETION));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    seen,
    lastSseWriteAt: () => lastSseWriteAt,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port nothing listens on. */
async function closedPort(): Promise<number> {
  const server = http.createServer().listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

interface OpenAiError {
  error: { message: string; type: string; code: string; login_url?: string };
}

describe("chat gateway in front of the token service (sqlite)", () => {
  let provider: TestProvider;
  let svc: TestService;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let gateway: ChatGateway;
  let gatewayUrl: string;
  const logs: GatewayLogEntry[] = [];
  /** Every error body the gateway sent, for the no-token check. */
  const errorBodies: string[] = [];
  /** Every token that existed in this test, for the no-token check. */
  const tokens = new Set<string>();

  async function login(user: string, expiresAt?: Date): Promise<TestTokenSet> {
    const set = await provider.login(user);
    for (const t of [set.access_token, set.refresh_token, set.id_token]) tokens.add(t);
    await svc.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: {
        accessToken: set.access_token,
        refreshToken: set.refresh_token,
        idToken: set.id_token,
        tokenType: set.token_type,
        scope: set.scope,
        ...(expiresAt ? { expiresAt: timestampFromDate(expiresAt) } : { expiresIn: BigInt(set.expires_in) }),
      },
    });
    return set;
  }

  async function currentToken(user: string): Promise<string> {
    const { token } = await svc.client.getToken({ userId: user, provider: "corp" });
    tokens.add(token);
    return token;
  }

  async function chat(user: string | undefined, body: Record<string, unknown>, base = gatewayUrl): Promise<Response> {
    const headers: Record<string, string> = {
      "content-type": "application/json",
      // What an OpenAI SDK sends: must be replaced, never forwarded.
      authorization: "Bearer sk-client-placeholder",
    };
    if (user) headers["x-user-id"] = user;
    const res = await fetch(`${base}/v1/chat/completions`, { method: "POST", headers, body: JSON.stringify(body) });
    if (res.status >= 400) {
      const text = await res.text();
      errorBodies.push(text + JSON.stringify([...res.headers]));
      return new Response(text, { status: res.status, headers: res.headers });
    }
    return res;
  }

  const ask = { model: "test-model", messages: [{ role: "user", content: "hi" }] };

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: { refresh: { lease_seconds: 5, provider_timeout_seconds: 2, max_attempts: 2, retry_base_delay_ms: 20 } },
    });
    upstream = await startUpstream();
    gateway = createChatGateway({
      tokenServiceUrl: svc.url,
      upstreamUrl: upstream.url,
      provider: "corp",
      loginUrl: LOGIN_URL,
      log: (entry) => logs.push(entry),
    });
    gatewayUrl = await gateway.listen(0, "127.0.0.1");
  });
  afterAll(async () => {
    await gateway?.close();
    await upstream?.close();
    await svc?.close();
    await provider?.close();
  });

  it("passes a completion through with the user's current access token", async () => {
    const stored = await login("alice");
    const res = await chat("alice", ask);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("application/json");
    expect(res.headers.get("set-cookie")).toBeNull();
    expect(await res.json()).toEqual(COMPLETION);

    const seen = upstream.seen.at(-1)!;
    expect(seen.path).toBe("/v1/chat/completions");
    expect(JSON.parse(seen.body)).toEqual(ask);
    expect(seen.headers["content-type"]).toBe("application/json");
    expect(seen.authorization).toBe(`Bearer ${stored.access_token}`);
    expect(seen.authorization).toBe(`Bearer ${await currentToken("alice")}`);
    expect(provider.stats.refreshes).toBe(0);

    const models = await fetch(`${gatewayUrl}/v1/models`, { headers: { "x-user-id": "alice" } });
    expect(models.status).toBe(200);
    expect(((await models.json()) as { data: unknown[] }).data).toHaveLength(1);
    expect(upstream.seen.at(-1)!.authorization).toBe(`Bearer ${stored.access_token}`);
  });

  it("refreshes an expired token on the way and forwards the new one", async () => {
    const stored = await login("bob", new Date(Date.now() - 60_000));
    const before = provider.stats.refreshes;
    const res = await chat("bob", ask);
    expect(res.status).toBe(200);
    expect(await res.json()).toEqual(COMPLETION);
    const sent = upstream.seen.at(-1)!.authorization;
    expect(sent).not.toBe(`Bearer ${stored.access_token}`);
    expect(sent).toBe(`Bearer ${await currentToken("bob")}`);
    expect(provider.stats.refreshes).toBe(before + 1);
  });

  it("streams server-sent events chunk by chunk as the upstream writes them", async () => {
    await login("carol");
    const res = await chat("carol", { ...ask, stream: true });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const reader = res.body!.getReader();
    const decoder = new TextDecoder();
    const chunks: Array<{ text: string; at: number }> = [];
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      chunks.push({ text: decoder.decode(value, { stream: true }), at: performance.now() });
    }
    const text = chunks.map((c) => c.text).join("");
    expect(text).toBe([...SSE_EVENTS, "[DONE]"].map((e) => `data: ${e}\n\n`).join(""));
    expect(chunks.length).toBeGreaterThan(1);
    // Not buffered: the first event reached the client before the upstream wrote its last one.
    expect(chunks[0]!.at).toBeLessThan(upstream.lastSseWriteAt());
    expect(upstream.seen.at(-1)!.authorization).toBe(`Bearer ${await currentToken("carol")}`);
  });

  it("answers 401 reauth_required with a login hint once the provider revoked the grant", async () => {
    const original = await login("dave");
    // A refresh through the service rotates the refresh token …
    tokens.add((await svc.client.getToken({ userId: "dave", provider: "corp", forceRefresh: true })).token);
    // … so redeeming the original again is reuse: the provider revokes the whole grant.
    expect((await provider.redeem(original.refresh_token)).status).toBe(400);
    const err = await svc.client.getToken({ userId: "dave", provider: "corp", forceRefresh: true }).then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(err).toBeInstanceOf(ConnectError);
    expect((err as ConnectError).code).toBe(Code.FailedPrecondition);
    expect((err as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason).toBe("REAUTH_REQUIRED");

    const calls = upstream.seen.length;
    const res = await chat("dave", ask);
    expect(res.status).toBe(401);
    const body = (await res.json()) as OpenAiError;
    expect(body.error.type).toBe("reauth_required");
    expect(body.error.code).toBe("reauth_required");
    expect(body.error.login_url).toBe(LOGIN_URL);
    expect(body.error.message).toContain(LOGIN_URL);
    expect(upstream.seen.length).toBe(calls);
  });

  it("answers 401 for a user without a session or a request without a user", async () => {
    const calls = upstream.seen.length;
    const unknown = await chat("nobody", ask);
    expect(unknown.status).toBe(401);
    const body = (await unknown.json()) as OpenAiError;
    expect(body.error.code).toBe("no_session");
    expect(body.error.message).toMatch(/no session/i);
    expect(body.error.login_url).toBe(LOGIN_URL);

    const anonymous = await chat(undefined, ask);
    expect(anonymous.status).toBe(401);
    expect(((await anonymous.json()) as OpenAiError).error.code).toBe("no_user");
    expect(upstream.seen.length).toBe(calls);
  });

  it("answers 503 with Retry-After when the token service is down, 502 when the upstream is", async () => {
    await login("erin");
    const noTokenService = createChatGateway({
      tokenServiceUrl: `http://127.0.0.1:${await closedPort()}`,
      upstreamUrl: upstream.url,
      provider: "corp",
      log: (entry) => logs.push(entry),
    });
    const noUpstream = createChatGateway({
      tokenServiceUrl: svc.url,
      upstreamUrl: `http://127.0.0.1:${await closedPort()}`,
      provider: "corp",
      log: (entry) => logs.push(entry),
    });
    try {
      const down = await chat("erin", ask, await noTokenService.listen(0));
      expect(down.status).toBe(503);
      expect(down.headers.get("retry-after")).toBe("1");
      expect(((await down.json()) as OpenAiError).error.code).toBe("token_service_unavailable");

      const unreachable = await chat("erin", ask, await noUpstream.listen(0));
      expect(unreachable.status).toBe(502);
      expect(((await unreachable.json()) as OpenAiError).error.code).toBe("upstream_unreachable");
    } finally {
      await noTokenService.close();
      await noUpstream.close();
    }
  });

  it("connects a user's account through /connect and the callback, then forwards that account's token", async () => {
    const connecting = createChatGateway({
      tokenServiceUrl: svc.url,
      upstreamUrl: upstream.url,
      provider: "corp",
      connectCallbackUrl: provider.redirectUri,
      log: (entry) => logs.push(entry),
    });
    const base = await connecting.listen(0, "127.0.0.1");
    try {
      const start = await fetch(`${base}/connect`, { redirect: "manual", headers: { "x-user-id": "zoe" } });
      expect(start.status).toBe(302);
      const location = start.headers.get("location")!;
      expect(new URL(location).origin).toBe(provider.issuer);
      expect(new URL(location).searchParams.get("redirect_uri")).toBe(provider.redirectUri);
      const back = new URL(await provider.authorize(location, "zoe"));
      const callbackPath = new URL(provider.redirectUri).pathname;
      const done = await fetch(`${base}${callbackPath}${back.search}`, { headers: { "x-user-id": "zoe" } });
      expect(done.status).toBe(200);
      expect(await done.json()).toMatchObject({ connected: true, provider: "corp" });
      // The code is used: the same callback again is refused.
      const replay = await fetch(`${base}${callbackPath}${back.search}`, { headers: { "x-user-id": "zoe" } });
      expect(replay.status).toBe(400);
      expect(((await replay.json()) as OpenAiError).error.code).toBe("invalid_state");
      expect((await fetch(`${base}/connect`, { redirect: "manual" })).status).toBe(401);

      const res = await chat("zoe", ask, base);
      expect(res.status).toBe(200);
      expect(upstream.seen.at(-1)!.authorization).toBe(`Bearer ${await currentToken("zoe")}`);

      const refused = await fetch(`${base}/connect`, { redirect: "manual", headers: { "x-user-id": "yves" } });
      const denied = new URL(await provider.authorize(refused.headers.get("location")!, "yves", { deny: true }));
      const deniedAnswer = await fetch(`${base}${callbackPath}${denied.search}`, { headers: { "x-user-id": "yves" } });
      expect(deniedAnswer.status).toBe(400);
      expect(((await deniedAnswer.json()) as OpenAiError).error.code).toBe("authorization_denied");
    } finally {
      await connecting.close();
    }
  });

  it("never forwards the identity header or the client's credential, and never leaks a token", async () => {
    expect(upstream.seen.length).toBeGreaterThan(0);
    for (const seen of upstream.seen) {
      expect(seen.headers["x-user-id"]).toBeUndefined();
      expect(seen.authorization).not.toContain("sk-client-placeholder");
      expect(seen.headers.cookie).toBeUndefined();
    }
    for (const t of upstream.seen.map((s) => s.authorization!.replace(/^Bearer /, ""))) tokens.add(t);
    expect(errorBodies.length).toBeGreaterThanOrEqual(5);
    const logText = JSON.stringify(logs);
    expect(logs.some((l) => l.token_error === "FailedPrecondition/REAUTH_REQUIRED")).toBe(true);
    for (const t of tokens) {
      for (const body of errorBodies) expect(body).not.toContain(t);
      expect(logText).not.toContain(t);
    }
  });
});

describe("chat gateway: a tool call refused for a scope becomes a step-up link (sqlite)", () => {
  let provider: TestProvider;
  let svc: TestService;
  let mcp: TestMcpServer;
  let gateway: ChatGateway;
  let base: string;
  const logs: GatewayLogEntry[] = [];

  beforeAll(async () => {
    provider = await startTestProvider({ resourceScopes: ["mcp:admin"] });
    mcp = await startMcpServer(provider.issuer, "admin-server", { challengeScope: "mcp:tools", toolScopes: { admin: ["mcp:tools", "mcp:admin"] } });
    svc = await startService({ dialect: "sqlite", provider });
    gateway = createChatGateway({
      tokenServiceUrl: svc.url,
      upstreamUrl: "http://127.0.0.1:1",
      provider: "corp",
      connectCallbackUrl: provider.redirectUri,
      toolServers: { files: mcp.url },
      log: (entry) => logs.push(entry),
    });
    base = await gateway.listen(0, "127.0.0.1");
  });
  afterAll(async () => {
    await gateway?.close();
    await svc?.close();
    await mcp?.close();
    await provider?.close();
  });

  const user = { "x-user-id": "uma" };
  const callbackPath = () => new URL(provider.redirectUri).pathname;
  /** The browser: from a URL at the provider back to the gateway's callback; the gateway's answer. */
  async function approve(location: string): Promise<Record<string, unknown>> {
    const back = new URL(await provider.authorize(location, "uma"));
    const done = await fetch(`${base}${callbackPath()}${back.search}`, { headers: user });
    expect(done.status).toBe(200);
    return (await done.json()) as Record<string, unknown>;
  }
  const call = (tool: string) => fetch(`${base}/v1/tools/files/${tool}`, { method: "POST", headers: { ...user, "content-type": "application/json" }, body: "{}" });

  it("answers 403 step_up_required with a link; after the user approves it, the retried call succeeds on the same session", async () => {
    const start = await fetch(`${base}/connect`, { redirect: "manual", headers: user });
    expect(start.status).toBe(302);
    expect(await approve(start.headers.get("location")!)).toMatchObject({ connected: true, provider: "corp" });
    expect((await call("whoami")).status).toBe(200);
    const [session] = (await svc.client.listSessions({ userId: "uma" })).sessions;

    const refused = await call("admin");
    expect(refused.status).toBe(403);
    const body = (await refused.json()) as OpenAiError;
    expect(body.error.code).toBe("step_up_required");
    const link = new URL(body.error.login_url!);
    expect(link.origin).toBe(provider.issuer);
    expect(link.searchParams.get("scope")!.split(" ")).toEqual(expect.arrayContaining(["mcp:tools", "mcp:admin"]));
    expect(mcp.refused.insufficient_scope).toBe(1);

    expect(await approve(link.href)).toMatchObject({ connected: true, stepped_up: true });
    const retried = await call("admin");
    expect(retried.status).toBe(200);
    expect(((await retried.json()) as { tool: string }).tool).toBe("admin");
    expect(mcp.calls.map((c) => c.tool)).toEqual(["whoami", "admin"]);
    // Still the one session, under the same id.
    expect((await svc.client.listSessions({ userId: "uma" })).sessions.map((s) => s.sessionId)).toEqual([session!.sessionId]);
    expect(logs.some((l) => l.tool_error === "insufficient_scope" && l.status === 403)).toBe(true);
  });
});

describe("chat gateway through the token service's forwarding proxy: the gateway never holds a token", () => {
  const GATEWAY_SECRET = "chat-gateway-forward-secret";
  const SETUP_SECRET = "chat-gateway-setup-secret";
  let provider: TestProvider;
  let svc: TestService;
  let upstream: Awaited<ReturnType<typeof startUpstream>>;
  let mcp: TestMcpServer;
  let gateway: ChatGateway;
  let base: string;
  const logs: GatewayLogEntry[] = [];
  const setup = () => createClient(TokenService, createGrpcTransport({ baseUrl: svc.url, interceptors: [bearer(SETUP_SECRET)] }));

  beforeAll(async () => {
    provider = await startTestProvider();
    upstream = await startUpstream();
    mcp = await startMcpServer(provider.issuer, "search");
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        callers: [
          // The gateway may forward (and connect accounts), but not take tokens out: no GetToken.
          { name: "chat-gateway", token_sha256: sha256(GATEWAY_SECRET), rpcs: ["Forward", "ListSessions", "StartAuthorization", "CompleteAuthorization"] },
          { name: "setup", token_sha256: sha256(SETUP_SECRET), rpcs: ["*"] },
        ],
        forward: [
          { id: "models", url: upstream.url, provider: "corp", allow_insecure_http: true },
          { id: "search", url: mcp.url, provider: "corp", resource: mcp.url, allow_insecure_http: true },
        ],
      },
    });
    gateway = createChatGateway({
      tokenServiceUrl: svc.url,
      upstreamUrl: "",
      proxy: { url: svc.httpUrl, models: "models" },
      provider: "corp",
      tokenServiceCredential: GATEWAY_SECRET,
      loginUrl: LOGIN_URL,
      toolServers: { search: mcp.url },
      log: (entry) => logs.push(entry),
    });
    base = await gateway.listen(0, "127.0.0.1");
  });
  afterAll(async () => {
    await gateway?.close();
    await Promise.all([upstream?.close(), mcp?.close()]);
    await svc?.close();
    await provider?.close();
  });

  const login = async (user: string, resources: string[] = []) => (await loginAndStore(provider, setup(), user, resources)).set;

  it("streams a chat completion through the proxy with the user's token, which the gateway could not have fetched", async () => {
    const set = await login("vera");
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-user-id": "vera", authorization: "Bearer sk-client-placeholder" },
      body: JSON.stringify({ model: "test-model", stream: true, messages: [] }),
    });
    expect(res.status).toBe(200);
    const text = await res.text();
    expect(text.split("\n\n").filter((e) => e.startsWith("data: ")).length).toBe(SSE_EVENTS.length + 1);
    const seen = upstream.seen.at(-1)!;
    expect(seen.authorization).toBe(`Bearer ${set.access_token}`);
    expect(seen.headers["x-token-service-user"]).toBeUndefined();
    // The gateway's own credential cannot take the token out.
    const gatewayClient = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url, interceptors: [bearer(GATEWAY_SECRET)] }));
    const refused = await gatewayClient.getToken({ userId: "vera", provider: "corp" }).catch((err: unknown) => err);
    expect(refused).toBeInstanceOf(ConnectError);
    expect((refused as ConnectError).code).toBe(Code.PermissionDenied);
  });

  it("answers no_session with the login URL for a user without a session", async () => {
    const res = await fetch(`${base}/v1/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-user-id": "walt" },
      body: JSON.stringify({ model: "test-model", messages: [] }),
    });
    expect(res.status).toBe(401);
    expect(((await res.json()) as OpenAiError).error).toMatchObject({ code: "no_session", login_url: LOGIN_URL });
  });

  it("calls a tool through the proxy, which sends the MCP server a token for that server only", async () => {
    await login("xena", [mcp.url]);
    const res = await fetch(`${base}/v1/tools/search/whoami`, { method: "POST", headers: { "x-user-id": "xena", "content-type": "application/json" }, body: "{}" });
    expect(res.status).toBe(200);
    const body = (await res.json()) as { result: { content: Array<{ text: string }> } };
    expect(JSON.parse(body.result.content[0]!.text)).toMatchObject({ server: "search", sub: "xena", aud: mcp.url });
    const notConnected = await fetch(`${base}/v1/tools/search/whoami`, { method: "POST", headers: { "x-user-id": "vera", "content-type": "application/json" }, body: "{}" });
    expect(notConnected.status).toBe(403);
    expect(((await notConnected.json()) as OpenAiError).error.code).toBe("tool_server_not_connected");
  });
});
