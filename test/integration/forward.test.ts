import { execFile as execFileCb } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { fileURLToPath } from "node:url";
import { setTimeout as sleep } from "node:timers/promises";
import { promisify } from "node:util";
import { join } from "node:path";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { Client as McpClient } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { InMemorySpanExporter } from "@opentelemetry/sdk-trace-base";
import { parse, stringify } from "yaml";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { tracingFromEnv } from "../../src/tracing/setup.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { sseEvents, startOpenAiStandIn, type OpenAiStandIn } from "../helpers/openai-stand-in.js";
import { startService, type TestService } from "../helpers/service.js";
import { loginAndStore } from "../helpers/session-login.js";

/**
 * The forwarding proxy (/forward/{target}/…) against real parts: a real
 * oidc-provider, a real OpenAI-compatible stand-in that checks the bearer,
 * a real MCP server (Streamable HTTP) that verifies audience tokens, and the
 * service's real HTTP listener.
 */

const execFile = promisify(execFileCb);
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const SECRETS = {
  gateway: "gateway-secret-9f3a",
  getter: "getter-secret-1c2d",
  narrow: "narrow-secret-77aa",
  narrowResource: "narrow-resource-secret-5e5e",
  bound: "bound-secret-0b0b",
  limited: "limited-secret-1111",
};
const FALLBACK_KEY = "sk-fallback-static-key-0123456789";

/** One request with exactly these headers (node:http sends Connection as given). */
function rawRequest(url: string, options: { method: string; headers: Record<string, string>; body: string }): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: options.method, headers: options.headers }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on("error", reject);
    req.end(options.body);
  });
}

function bearer(credential: string): Interceptor {
  return (next) => (req) => {
    req.header.set("authorization", `Bearer ${credential}`);
    return next(req);
  };
}

describe("forwarding proxy", () => {
  let provider: TestProvider;
  let standIn: OpenAiStandIn;
  let mcp: TestMcpServer;
  let svc: TestService;
  let tokens: Client<typeof TokenService>;
  const exporter = new InMemorySpanExporter();
  /** Every user token seen in this file, for the leak checks. */
  const userTokens = new Set<string>();
  const rejected = new Set<string>();

  beforeAll(async () => {
    provider = await startTestProvider();
    standIn = await startOpenAiStandIn();
    mcp = await startMcpServer(provider.issuer, "tools");
    const dir = mkdtempSync(join(tmpdir(), "forward-test-"));
    const keyFile = join(dir, "llm-key");
    writeFileSync(keyFile, `${FALLBACK_KEY}\n`);
    const tracing = await tracingFromEnv({ OTEL_BSP_SCHEDULE_DELAY: "20" }, { db: { "db.system.name": "sqlite" }, exporters: [exporter] });
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        // "other" only to scope a caller away from "corp".
        providers: ["corp", "other"].map((id) => provider.configEntry(id)),
        callers: [
          { name: "gateway", token_sha256: sha256(SECRETS.gateway), rpcs: ["StoreSession", "GetToken", "Forward"] },
          { name: "getter", token_sha256: sha256(SECRETS.getter), rpcs: ["GetToken"] },
          { name: "narrow", token_sha256: sha256(SECRETS.narrow), rpcs: ["Forward"], providers: ["other"] },
          { name: "narrow-resource", token_sha256: sha256(SECRETS.narrowResource), rpcs: ["Forward"], resources: ["https://elsewhere.example"] },
          { name: "bound", token_sha256: sha256(SECRETS.bound), rpcs: ["Forward"], user_binding: "session_id" },
          { name: "limited", token_sha256: sha256(SECRETS.limited), rpcs: ["Forward"], rate_limit: { per_second: 0.001, burst: 1 } },
        ],
        forward: [
          { id: "models", url: `${standIn.url}/v1`, provider: "corp", fallback_key_file: keyFile, allow_insecure_http: true },
          { id: "models-strict", url: `${standIn.url}/v1`, provider: "corp", allow_insecure_http: true },
          { id: "silent", url: `${standIn.url}/v1`, provider: "corp", fallback_key_file: keyFile, first_byte_timeout_ms: 300, allow_insecure_http: true },
          { id: "models-key", url: `${standIn.url}/v1`, provider: "corp", header: "api-key", allow_insecure_http: true },
          { id: "tools", url: mcp.url, provider: "corp", resource: mcp.url, allow_insecure_http: true },
        ],
      },
      overrides: {
        tracing,
        // A reload reads the same file and environment as start-up did.
        loadConfig: () => loadConfig(svc.env),
      },
    });
    tokens = createClient(TokenService, createGrpcTransport({ baseUrl: svc.url, interceptors: [bearer(SECRETS.gateway)] }));
    // The stand-in takes what the provider says is active, except tokens a test marked rejected.
    standIn.accept = async (token) => token === FALLBACK_KEY || (!rejected.has(token) && (await provider.introspect(token)).active);
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([standIn?.close(), mcp?.close()]);
    await provider?.close();
  });
  beforeEach(() => {
    standIn.requests.length = 0;
    standIn.events.length = 0;
    standIn.gate = () => Promise.resolve();
  });

  async function login(user: string, resources: string[] = []) {
    const stored = await loginAndStore(provider, tokens, user, resources);
    userTokens.add(stored.set.access_token).add(stored.set.refresh_token).add(stored.set.id_token);
    return stored;
  }

  function forward(path: string, init: RequestInit & { user?: string; credential?: string } = {}) {
    const headers = new Headers(init.headers);
    headers.set("authorization", `Bearer ${init.credential ?? SECRETS.gateway}`);
    if (init.user) headers.set("x-token-service-user", init.user);
    return fetch(`${svc.httpUrl}/forward/${path}`, { ...init, headers });
  }

  const chat = (stream: boolean) => JSON.stringify({ model: "m", stream, messages: [{ role: "user", content: "hi" }] });

  it("streams a chat completion event by event: each event reaches the caller before the next is sent", async () => {
    const { set } = await login("alice");
    const released: Array<() => void> = [];
    standIn.gate = (n) => new Promise<void>((resolve) => (released[n] = resolve));
    const res = await forward("models/chat/completions", { method: "POST", user: "alice", body: chat(true), headers: { "content-type": "application/json" } });
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toBe("text/event-stream");
    const parts: string[] = [];
    let n = 0;
    for await (const data of sseEvents(res.body!)) {
      if (data === "[DONE]") break;
      standIn.events.push(`received ${n}`);
      parts.push((JSON.parse(data) as { choices: Array<{ delta: { content: string } }> }).choices[0]!.delta.content);
      // The next event is sent only once this one is here: a proxy that buffered would hang the stream.
      released[n]?.();
      n++;
    }
    expect(parts.join("")).toBe("Hello, world");
    expect(standIn.events).toEqual(["sent 0", "received 0", "sent 1", "received 1", "sent 2", "received 2", "sent 3", "received 3", "sent 4", "received 4"]);
    // The stand-in got the user's token, and nothing of the caller's.
    const seen = standIn.requests[0]!;
    expect(seen.path).toBe("/v1/chat/completions");
    expect(seen.headers.authorization).toBe(`Bearer ${set.access_token}`);
  });

  it("never forwards the caller's Authorization, cookies, x-token-service-* or hop-by-hop headers, and keeps the query", async () => {
    const { set, sessionId } = await login("dora");
    // node:http, not fetch: fetch refuses to send Connection and its options.
    const res = await rawRequest(`${svc.httpUrl}/forward/models-key/chat/completions?api-version=2024-10-01`, {
      method: "POST",
      body: chat(false),
      headers: {
        authorization: `Bearer ${SECRETS.gateway}`,
        "x-token-service-user": "dora",
        "x-token-service-session": sessionId,
        cookie: "session=caller-cookie",
        connection: "keep-alive, x-hop",
        "x-hop": "drop me",
        "x-end-to-end": "keep me",
        "content-type": "application/json",
      },
    });
    expect(res.status).toBe(200);
    const seen = standIn.requests[0]!;
    expect(seen.path).toBe("/v1/chat/completions?api-version=2024-10-01");
    // This target takes its token in api-key: the token alone there, and no Authorization at all.
    expect(seen.headers["api-key"]).toBe(set.access_token);
    expect(seen.headers.authorization).toBeUndefined();
    expect(JSON.stringify(seen.headers)).not.toContain(SECRETS.gateway);
    expect(seen.headers.cookie).toBeUndefined();
    expect(seen.headers["x-hop"]).toBeUndefined();
    expect(Object.keys(seen.headers).filter((h) => h.startsWith("x-token-service-"))).toEqual([]);
    expect(seen.headers["x-end-to-end"]).toBe("keep me");
    // And back: the upstream's cookies and its own hop-by-hop fields stay with the proxy.
    expect(res.headers["set-cookie"]).toBeUndefined();
    expect(res.headers["x-upstream-hop"]).toBeUndefined();
    expect(JSON.parse(res.body)).toMatchObject({ object: "chat.completion" });
  });

  it("uses the fallback key for a user without a session", async () => {
    const res = await forward("models/chat/completions", { method: "POST", user: "bob", body: chat(false) });
    expect(res.status).toBe(200);
    expect(standIn.requests[0]!.headers.authorization).toBe(`Bearer ${FALLBACK_KEY}`);
    await res.text();
  });

  it("answers 401 with the reason and how to start an authorization when there is no session and no fallback", async () => {
    const res = await forward("models-strict/chat/completions", { method: "POST", user: "bob", body: chat(false) });
    expect(res.status).toBe(401);
    const body = (await res.json()) as Record<string, unknown>;
    expect(body).toMatchObject({
      reason: "SESSION_NOT_FOUND",
      target: "models-strict",
      provider: "corp",
      start_authorization: { rpc: "tokenservice.v1.TokenService/StartAuthorization", provider: "corp" },
    });
    expect(standIn.requests).toEqual([]);
  });

  it("refuses callers outside their scopes before any upstream request", async () => {
    await login("erin");
    const byProvider = await forward("models/chat/completions", { method: "POST", user: "erin", body: chat(false), credential: SECRETS.narrow });
    expect(byProvider.status).toBe(403);
    expect(await byProvider.json()).toMatchObject({ code: "permission_denied", reason: "PROVIDER_NOT_ALLOWED" });
    const byResource = await forward("tools", { method: "POST", user: "erin", body: "{}", credential: SECRETS.narrowResource });
    expect(byResource.status).toBe(403);
    expect(await byResource.json()).toMatchObject({ code: "permission_denied", reason: "RESOURCE_NOT_ALLOWED" });
    const byRpc = await forward("models/chat/completions", { method: "POST", user: "erin", body: chat(false), credential: SECRETS.getter });
    expect(byRpc.status).toBe(403);
    expect(await byRpc.json()).toMatchObject({ reason: "RPC_NOT_ALLOWED" });
    const anonymous = await fetch(`${svc.httpUrl}/forward/models/chat/completions`, { method: "POST", body: chat(false), headers: { "x-token-service-user": "erin" } });
    expect(anonymous.status).toBe(401);
    await anonymous.text();
    expect(standIn.requests).toEqual([]);
    expect(mcp.refused).toEqual({});
    const denied = svc.logs.lines().filter((l) => l.audit === true && l.event === "denied" && l.rpc === "tokenservice.v1.TokenService/Forward");
    expect(denied.map((l) => l.reason).sort()).toEqual(["no_credential", "provider_not_allowed", "resource_not_allowed", "rpc_not_allowed"]);
  });

  it("applies the caller's user binding and rate limit as for GetToken", async () => {
    const { sessionId, set } = await login("judy");
    const byUser = await forward("models-strict/chat/completions", { method: "POST", user: "judy", body: chat(false), credential: SECRETS.bound });
    expect(byUser.status).toBe(403);
    expect(await byUser.json()).toMatchObject({ reason: "USER_NOT_BOUND" });
    expect(standIn.requests).toEqual([]);
    const bySession = await forward("models-strict/chat/completions", {
      method: "POST",
      user: "judy",
      body: chat(false),
      credential: SECRETS.bound,
      headers: { "x-token-service-session": sessionId },
    });
    expect(bySession.status).toBe(200);
    await bySession.text();
    expect(standIn.requests[0]!.headers.authorization).toBe(`Bearer ${set.access_token}`);
    const first = await forward("models/chat/completions", { method: "POST", user: "judy", body: chat(false), credential: SECRETS.limited });
    expect(first.status).toBe(200);
    await first.text();
    const second = await forward("models/chat/completions", { method: "POST", user: "judy", body: chat(false), credential: SECRETS.limited });
    expect(second.status).toBe(429);
    expect(await second.json()).toMatchObject({ reason: "RATE_LIMITED" });
    expect(standIn.requests.length).toBe(2);
  });

  it("calls a real MCP server through the proxy with an audience token", async () => {
    await login("frank", [mcp.url]);
    const transport = new StreamableHTTPClientTransport(new URL(`${svc.httpUrl}/forward/tools`), {
      requestInit: { headers: { authorization: `Bearer ${SECRETS.gateway}`, "x-token-service-user": "frank" } },
    });
    const client = new McpClient({ name: "test", version: "1.0.0" });
    await client.connect(transport);
    const result = (await client.callTool({ name: "whoami", arguments: {} })) as { content: Array<{ text: string }> };
    await client.close();
    const who = JSON.parse(result.content[0]!.text) as { sub: string; aud: string };
    expect(who).toMatchObject({ sub: "frank", aud: mcp.url });
    userTokens.add((await tokens.getToken({ userId: "frank", provider: "corp", resource: mcp.url })).token);
    const line = svc.logs.lines().find((l) => l.rpc === "tokenservice.v1.TokenService/Forward" && l.target === "tools" && l.status === "200");
    expect(line).toMatchObject({ caller: "gateway", token_source: "audience" });
  });

  it("after a 401 invalid_token, 100 concurrent callers share one refresh and each retries once", async () => {
    await login("carol");
    const before = await tokens.getToken({ userId: "carol", provider: "corp" });
    rejected.add(before.token);
    provider.resetStats();
    const answers = await Promise.all(
      Array.from({ length: 100 }, () => forward("models/chat/completions", { method: "POST", user: "carol", body: chat(false) }).then(async (r) => ({ status: r.status, body: await r.text() }))),
    );
    expect(answers.map((a) => a.status)).toEqual(Array.from({ length: 100 }, () => 200));
    expect(provider.stats.refreshes).toBe(1);
    const after = await tokens.getToken({ userId: "carol", provider: "corp" });
    userTokens.add(after.token);
    expect(after.token).not.toBe(before.token);
    const sent = standIn.requests.map((r) => r.headers.authorization);
    expect(sent.filter((a) => a === `Bearer ${before.token}`).length).toBeLessThanOrEqual(100);
    expect(sent.filter((a) => a === `Bearer ${after.token}`).length).toBe(100);
    const retried = svc.logs.lines().filter((l) => l.rpc === "tokenservice.v1.TokenService/Forward" && l.retried === "true");
    expect(retried.length).toBe(sent.length - 100);
  });

  it("when the refresh after a 401 invalid_token shows the session needs a new login: the fallback key, else 401 REAUTH_REQUIRED", async () => {
    const bodyOf = { kind: "status" as const, status: 400, body: JSON.stringify({ error: "invalid_grant", error_description: "grant revoked" }), headers: { "content-type": "application/json" } };
    for (const user of ["kate", "leo"]) {
      await login(user);
      rejected.add((await tokens.getToken({ userId: user, provider: "corp" })).token);
    }
    provider.faults.push(bodyOf, bodyOf);
    const strict = await forward("models-strict/chat/completions", { method: "POST", user: "kate", body: chat(false) });
    expect(strict.status).toBe(401);
    expect(await strict.json()).toMatchObject({ reason: "REAUTH_REQUIRED", provider: "corp" });
    expect(standIn.requests.length).toBe(1);
    const withKey = await forward("models/chat/completions", { method: "POST", user: "leo", body: chat(false) });
    expect(withKey.status).toBe(200);
    await withKey.text();
    expect(standIn.requests.map((r) => r.headers.authorization).at(-1)).toBe(`Bearer ${FALLBACK_KEY}`);
    const line = svc.logs.lines().findLast((l) => l.rpc === "tokenservice.v1.TokenService/Forward" && l.retried === "true");
    expect(line).toMatchObject({ token_source: "fallback", session: "REAUTH_REQUIRED", status: "200" });
  });

  it("passes a 403 insufficient_scope on with its WWW-Authenticate", async () => {
    await login("gina");
    const res = await forward("models/scoped", { method: "POST", user: "gina", body: "{}" });
    expect(res.status).toBe(403);
    expect(res.headers.get("www-authenticate")).toBe('Bearer error="insufficient_scope", scope="models:write"');
    await res.text();
  });

  it("answers 504 when the target sends no response headers within first_byte_timeout_ms", async () => {
    const res = await forward("silent/silent", { user: "nobody" });
    expect(res.status).toBe(504);
    expect(await res.json()).toMatchObject({ reason: "UPSTREAM_TIMEOUT" });
  });

  it("keeps an idle stream open past first_byte_timeout_ms once the headers came (no timeout between events)", async () => {
    let release!: () => void;
    standIn.idle = new Promise<void>((resolve) => (release = resolve));
    const res = await forward("silent/idle", { user: "nobody" });
    expect(res.status).toBe(200);
    const reader = res.body!.getReader();
    expect(new TextDecoder().decode((await reader.read()).value)).toBe(": open\n\n");
    // Idle for well past the target's first_byte_timeout_ms (300 ms): a timeout between events would cut the stream
    // here. (undici checks such timers about once a second: with a 300 ms body timeout, 600 ms idle still passed.)
    await sleep(2000);
    release();
    let rest = "";
    for (let part = await reader.read(); !part.done; part = await reader.read()) rest += new TextDecoder().decode(part.value);
    expect(rest).toBe("data: late\n\n");
  });

  it("aborts the upstream request when the caller disconnects", async () => {
    await login("hank");
    const controller = new AbortController();
    const res = await forward("models/hang", { user: "hank", signal: controller.signal });
    expect(res.status).toBe(200);
    await standIn.hangArrived;
    controller.abort();
    // Resolves only when the stand-in saw its request closed before it answered.
    await standIn.hangAborted;
    await expect.poll(() => svc.logs.lines().some((l) => l.rpc === "tokenservice.v1.TokenService/Forward" && l.code === "canceled" && l.target === "models")).toBe(true);
  });

  it("runs the curl command of docs/forwarding.md as written", async () => {
    await login("alice");
    const page = readFileSync(fileURLToPath(new URL("../../docs/forwarding.md", import.meta.url)), "utf8");
    const start = page.indexOf("\n## Calling it\n");
    const block = /```sh\n([\s\S]*?)```/.exec(page.slice(start))![1]!;
    const command = block.replace(/\\\n\s*/g, "").trim().replace("http://127.0.0.1:50052", svc.httpUrl);
    const { stdout } = await execFile("sh", ["-c", command], { env: { PATH: process.env.PATH ?? "", GATEWAY_CREDENTIAL: SECRETS.gateway } });
    const events = stdout.split("\n").filter((l) => l.startsWith("data: "));
    expect(events.at(-1)).toBe("data: [DONE]");
    expect(events.length).toBe(6);
    expect(standIn.requests[0]!.headers["x-token-service-user"]).toBeUndefined();
  });

  it("takes targets from the YAML file on a reload: an added one serves, a removed one is gone", async () => {
    const file = join(svc.dir, "config.yaml");
    const yaml = parse(readFileSync(file, "utf8")) as { forward: Array<Record<string, unknown>> };
    const original = stringify(yaml);
    writeFileSync(file, stringify({ ...yaml, forward: [...yaml.forward, { id: "late", url: `${standIn.url}/v1`, provider: "corp", fallback_key_file: yaml.forward[0]!.fallback_key_file, allow_insecure_http: true }] }));
    expect(await svc.app.reload()).toMatchObject({ ok: true, changed: true });
    const added = await forward("late/chat/completions", { method: "POST", user: "nobody-here", body: chat(false) });
    expect(added.status).toBe(200);
    await added.text();
    writeFileSync(file, original);
    expect(await svc.app.reload()).toMatchObject({ ok: true, changed: true });
    const removed = await forward("late/chat/completions", { method: "POST", user: "nobody-here", body: chat(false) });
    expect(removed.status).toBe(404);
    expect(await removed.json()).toMatchObject({ reason: "TARGET_NOT_FOUND" });
  });

  it("puts no token, key or credential in any log line, metric, span or error body, and sends its CLIENT span's traceparent on", async () => {
    await login("ivan");
    const ok = await forward("models/chat/completions", { method: "POST", user: "ivan", body: chat(false) });
    expect(ok.status).toBe(200);
    await ok.text();
    const traceparent = String(standIn.requests[0]!.headers.traceparent);
    await expect.poll(() => exporter.getFinishedSpans().some((s) => traceparent.includes(s.spanContext().spanId))).toBe(true);
    const client = exporter.getFinishedSpans().find((s) => traceparent.includes(s.spanContext().spanId))!;
    expect(client.kind).toBe(2); // SpanKind.CLIENT
    expect(client.attributes).toMatchObject({ "http.request.method": "POST", "http.response.status_code": 200, "token_service.forward.target": "models", "token_service.token_source": "session" });
    const errorBodies = [
      await (await forward("models-strict/chat/completions", { method: "POST", user: "nobody", body: chat(false) })).text(),
      await (await forward("models/chat/completions", { method: "POST", user: "ivan", body: chat(false), credential: SECRETS.narrow })).text(),
      await (await forward("nope/x", { user: "ivan" })).text(),
    ];
    expect(errorBodies[2]).toContain("TARGET_NOT_FOUND");
    const metrics = await svc.app.metrics.registry.metrics();
    expect(metrics).toMatch(/token_service_forward_requests_total\{target="models",status_class="2xx",token_source="session"\} \d+/);
    expect(metrics).toMatch(/token_service_forward_requests_total\{target="models",status_class="2xx",token_source="fallback"\} \d+/);
    expect(metrics).toMatch(/token_service_forward_requests_total\{target="models-strict",status_class="4xx",token_source="none"\} \d+/);
    expect(metrics).toMatch(/token_service_forward_requests_total\{target="unknown",status_class="4xx",token_source="none"\} \d+/);
    expect(metrics).toContain("token_service_forward_first_byte_seconds_bucket");
    expect(metrics).toContain("token_service_forward_duration_seconds_bucket");
    const spans = JSON.stringify(exporter.getFinishedSpans().map((s) => ({ name: s.name, attributes: s.attributes, events: s.events, status: s.status })));
    const logs = svc.logs.text();
    const secrets = [...userTokens, FALLBACK_KEY, ...Object.values(SECRETS)];
    for (const secret of secrets) {
      for (const [where, text] of [["logs", logs], ["metrics", metrics], ["spans", spans], ["error bodies", errorBodies.join("\n")]] as const) {
        expect(text.includes(secret), `${where} hold a secret`).toBe(false);
      }
    }
  });
});
