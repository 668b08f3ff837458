import { createHash, randomBytes } from "node:crypto";
import { once } from "node:events";
import { mkdtempSync, rmSync } from "node:fs";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { SpanKind } from "@opentelemetry/api";
import { InMemorySpanExporter, type ReadableSpan } from "@opentelemetry/sdk-trace-base";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectJsonClient, grpcJsClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService } from "../helpers/process.js";
import { startService, type TestService } from "../helpers/service.js";
import { SessionRepository } from "../../src/db/session-repository.js";
import { TokenVault } from "../../src/sessions/token-vault.js";
import { tracingFromEnv, type Tracing } from "../../src/tracing/setup.js";
import type { FetchLike } from "../../src/providers/provider-client.js";

const CALLER_SECRET = `caller-${randomBytes(16).toString("base64url")}`;
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

/** A W3C traceparent for a caller's own span, and its ids. */
function callerTrace() {
  const traceId = randomBytes(16).toString("hex");
  const spanId = randomBytes(8).toString("hex");
  return { traceId, spanId, traceparent: `00-${traceId}-${spanId}-01` };
}

/** Polls until `check` passes (spans are exported in batches). */
async function eventually<T>(check: () => T, timeoutMs = 10_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    try {
      return check();
    } catch (err) {
      if (Date.now() > until) throw err;
      await sleep(25);
    }
  }
}

describe("OpenTelemetry traces", () => {
  let provider: TestProvider;
  let svc: TestService;
  const exporter = new InMemorySpanExporter();
  let tracing: Tracing;
  /** traceparent headers as sent to the provider, by URL path. */
  const sent: Array<{ path: string; traceparent: string | null }> = [];
  const recordingFetch: FetchLike = (url, init) => {
    sent.push({ path: new URL(url).pathname, traceparent: new Headers(init.headers).get("traceparent") });
    return fetch(url, init);
  };
  const spans = () => exporter.getFinishedSpans();
  const inTrace = (traceId: string) => spans().filter((s) => s.spanContext().traceId === traceId);
  const children = (parent: ReadableSpan) => spans().filter((s) => s.parentSpanContext?.spanId === parent.spanContext().spanId);

  beforeAll(async () => {
    provider = await startTestProvider();
    tracing = await tracingFromEnv({ OTEL_BSP_SCHEDULE_DELAY: "20" }, { db: { "db.system.name": "sqlite" }, exporters: [exporter] });
    svc = await startService({
      dialect: "sqlite",
      provider,
      // A second provider with its token endpoint written in the YAML file: no discovery.
      yaml: {
        providers: [
          provider.configEntry("corp"),
          { ...provider.configEntry("static"), token_endpoint: `${provider.issuer}/token`, revocation_endpoint: `${provider.issuer}/token/revocation` },
        ],
        refresh: { lease_seconds: 3, provider_timeout_seconds: 1, max_attempts: 1, background: { interval_seconds: 0.2 } },
        sweeper: { interval_seconds: 1 },
        callers: [{ name: "gateway", token_sha256: sha256(CALLER_SECRET), rpcs: ["*"] }],
      },
      overrides: { tracing, fetch: recordingFetch },
    });
  });

  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  const client = () => connectJsonClient(svc.httpUrl, { bearer: CALLER_SECRET });

  /** Every session id and token value this file has seen: none may appear in a span. */
  const secrets: string[] = [CALLER_SECRET];

  async function store(user: string, providerId = "corp", expiresIn = 3600n) {
    const tokens = await provider.login(user);
    secrets.push(tokens.access_token, tokens.refresh_token, tokens.id_token);
    const { sessionId } = await client().storeSession({
      userId: user,
      provider: providerId,
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, idToken: tokens.id_token, expiresIn },
    });
    secrets.push(sessionId);
    return { tokens, sessionId };
  }

  it("continues the caller's trace on the gRPC listener: RPC, session read, refresh, lease, provider request with traceparent onward", async () => {
    const { sessionId, tokens } = await store("alice");
    const t = callerTrace();
    const grpc = grpcJsClient(svc.url, { bearer: CALLER_SECRET });
    try {
      await grpc.call("GetToken", { user_id: "alice", session_id: sessionId, force_refresh: true }, { metadata: { traceparent: t.traceparent } });
    } finally {
      grpc.close();
    }
    const rpc = await eventually(() => {
      const s = inTrace(t.traceId).find((x) => x.name === "tokenservice.v1.TokenService/GetToken");
      expect(s).toBeDefined();
      return s!;
    });
    expect(rpc.kind).toBe(SpanKind.SERVER);
    expect(rpc.parentSpanContext?.spanId).toBe(t.spanId);
    expect(rpc.attributes).toMatchObject({ "rpc.system": "grpc", "rpc.service": "tokenservice.v1.TokenService", "rpc.method": "GetToken", "rpc.grpc.status_code": 0, "token_service.caller": "gateway" });

    const refresh = await eventually(() => {
      const s = children(rpc).find((x) => x.name === "refresh");
      expect(s).toBeDefined();
      return s!;
    });
    expect(refresh.attributes["token_service.coalesced"]).toBe(false);
    expect(refresh.attributes["token_service.outcome"]).toBe("refreshed");
    expect(refresh.attributes["token_service.session.ref"]).toMatch(/^[\w-]{12}$/);
    await tracing.flush();
    const read = children(rpc).find((x) => x.name === "session read");
    expect(read?.attributes).toMatchObject({ "db.system.name": "sqlite", "db.operation.name": "SELECT", "token_service.cache": "miss" });

    const under = await eventually(() => {
      const names = children(refresh).map((s) => s.name);
      expect(names).toEqual(expect.arrayContaining(["refresh lease", "POST token", "refresh store"]));
      return children(refresh);
    });
    expect(under.find((s) => s.name === "refresh lease")?.attributes["token_service.lease"]).toBe("acquired");
    const http = under.find((s) => s.name === "POST token")!;
    expect(http.kind).toBe(SpanKind.CLIENT);
    expect(http.attributes).toMatchObject({ "http.request.method": "POST", "url.full": `${provider.issuer}/token`, "http.response.status_code": 200, "token_service.provider": "corp" });
    // The provider got the CLIENT span's own traceparent.
    const onward = sent.filter((r) => r.path === "/token" && r.traceparent?.includes(t.traceId));
    expect(onward.map((r) => r.traceparent)).toContain(`00-${t.traceId}-${http.spanContext().spanId}-01`);

    // The refreshed row is read once more (and cached); the call after that is a cache hit.
    await client().getToken({ userId: "alice", sessionId });
    const again = callerTrace();
    const answer = await client().getToken({ userId: "alice", sessionId }, { headers: { traceparent: again.traceparent } });
    secrets.push(answer.token);
    const hit = await eventually(() => {
      const rpc2 = inTrace(again.traceId).find((x) => x.kind === SpanKind.SERVER);
      expect(rpc2?.attributes["rpc.system"]).toBe("connect_rpc");
      const s = children(rpc2!).find((x) => x.name === "session read");
      expect(s).toBeDefined();
      return s!;
    });
    expect(hit.attributes["token_service.cache"]).toBe("hit");
    expect(answer.token).not.toBe(tokens.access_token);
  });

  it("sends traceparent to a provider whose endpoints come from the YAML file", async () => {
    const { sessionId } = await store("bob", "static");
    const t = callerTrace();
    await client().getToken({ userId: "bob", sessionId, forceRefresh: true }, { headers: { traceparent: t.traceparent } });
    const http = await eventually(() => {
      const s = inTrace(t.traceId).find((x) => x.kind === SpanKind.CLIENT);
      expect(s).toBeDefined();
      return s!;
    });
    expect(http.attributes["token_service.provider"]).toBe("static");
    expect(sent.some((r) => r.traceparent === `00-${t.traceId}-${http.spanContext().spanId}-01`)).toBe(true);

    // RevokeSession's requests to the revocation endpoint are spans of its call, too.
    const r = callerTrace();
    await client().revokeSession({ userId: "bob", sessionId }, { headers: { traceparent: r.traceparent } });
    const revocations = await eventually(() => {
      const s = inTrace(r.traceId).filter((x) => x.name === "POST revocation");
      expect(s.length).toBeGreaterThan(0);
      return s;
    });
    expect(revocations[0]!.attributes).toMatchObject({ "url.full": `${provider.issuer}/token/revocation`, "token_service.endpoint": "revocation" });
  });

  it("marks callers that joined a refresh in flight as coalesced, and traces a wait on another replica's lease", async () => {
    const { sessionId } = await store("carol");
    // Another replica holds the lease (it will lapse after 1.5 s): this caller waits, then takes over.
    const repo = new SessionRepository(svc.app.orm, "sqlite");
    const row = await repo.findById(sessionId);
    const now = new Date();
    expect(await repo.acquireLease(sessionId, row!.version, "other-replica:1", now, new Date(now.getTime() + 1500))).not.toBeNull();
    const t = callerTrace();
    const calls = [0, 1, 2].map(() => client().getToken({ userId: "carol", sessionId, forceRefresh: true }, { headers: { traceparent: t.traceparent } }));
    await Promise.all(calls);
    const refreshes = await eventually(() => {
      const r = inTrace(t.traceId).filter((s) => s.name === "refresh");
      expect(r).toHaveLength(3);
      return r;
    });
    expect(refreshes.filter((s) => s.attributes["token_service.coalesced"] === true)).toHaveLength(2);
    const leader = refreshes.find((s) => s.attributes["token_service.coalesced"] === false)!;
    const wait = await eventually(() => {
      const w = children(leader).find((s) => s.name === "refresh wait (another replica)");
      expect(w).toBeDefined();
      return w!;
    });
    expect(Number(wait.attributes["token_service.wait_rounds"])).toBeGreaterThan(1);
    const leases = children(leader).filter((s) => s.name === "refresh lease").map((s) => s.attributes["token_service.lease"]);
    expect(leases[0]).toBe("held_elsewhere");
    expect(leases.at(-1)).toBe("taken_over");
  });

  it("traces background refreshes and sweeper passes as traces of their own", async () => {
    // Expires within the background refresher's lead time: it refreshes the session without any caller.
    await store("dave", "corp", 8n);
    const background = await eventually(() => {
      const s = spans().find((x) => x.name === "background refresh");
      expect(s).toBeDefined();
      return s!;
    }, 20_000);
    expect(background.parentSpanContext).toBeUndefined();
    const inner = await eventually(() => {
      const r = children(background).find((x) => x.name === "refresh");
      expect(r).toBeDefined();
      expect(children(r!).some((c) => c.kind === SpanKind.CLIENT)).toBe(true);
      return r!;
    });
    expect(inner.attributes["token_service.outcome"]).toBe("refreshed");
    const sweep = await eventually(() => {
      const s = spans().find((x) => x.name === "sweeper pass");
      expect(s).toBeDefined();
      return s!;
    });
    expect(sweep.parentSpanContext).toBeUndefined();
    expect(sweep.attributes["token_service.swept.expiredLifetime"]).toBe(0);
  });

  it("marks a failed refresh's spans with the error code, and spans carry no token, secret, credential or session id", async () => {
    const { sessionId } = await store("erin");
    provider.faults.push({ kind: "status", status: 500 });
    const t = callerTrace();
    await client()
      .getToken({ userId: "erin", sessionId, forceRefresh: true }, { headers: { traceparent: t.traceparent } })
      .catch(() => undefined);
    const http = await eventually(() => {
      const s = inTrace(t.traceId).find((x) => x.kind === SpanKind.CLIENT && x.attributes["http.response.status_code"] === 500);
      expect(s).toBeDefined();
      return s!;
    });
    expect(http.attributes["error.type"]).toBe("500");
    // The refresh and the RPC end just after the provider request: export them before reading.
    await tracing.flush();
    const refresh = inTrace(t.traceId).find((s) => s.name === "refresh")!;
    expect(refresh.attributes["error.type"]).toBe("PROVIDER_UNAVAILABLE");
    const rpc = inTrace(t.traceId).find((s) => s.kind === SpanKind.SERVER)!;
    expect(rpc.attributes["rpc.grpc.status_code"]).toBe(14);
    expect(rpc.attributes["token_service.reason"]).toBe("PROVIDER_UNAVAILABLE");

    // Everything every span carries, against every secret this file has seen: the tokens as stored now
    // (rotated refresh tokens included), the tokens handed out, the caller credential, the client secret.
    secrets.push(provider.clientSecret);
    const repo = new SessionRepository(svc.app.orm, "sqlite");
    const vault = new TokenVault(svc.app.keyRing);
    for (const id of secrets.filter((x) => x.length === 43)) {
      const row = await repo.findById(id);
      if (!row) continue;
      const open = vault.openAll(row);
      secrets.push(...[open.access, open.refresh, open.id].filter((x): x is string => x !== undefined));
    }
    expect(secrets.length).toBeGreaterThan(30);
    await tracing.flush();
    const dump = JSON.stringify(
      spans().map((s) => ({ name: s.name, attributes: s.attributes, status: s.status, events: s.events, links: s.links, resource: s.resource.attributes })),
    );
    expect(spans().length).toBeGreaterThan(20);
    for (const secret of secrets) expect(dump).not.toContain(secret);
  });
});

describe("tracing configured by the OTEL_* variables (the built service as its own process)", () => {
  let dir: string;
  let collector: http.Server;
  let collectorUrl: string;
  /** OTLP/JSON export requests the collector received. */
  const exports: Array<{ path: string; body: OtlpJson }> = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-otel-"));
    collector = http.createServer((req, res) => {
      let body = "";
      req.setEncoding("utf8").on("data", (d: string) => (body += d));
      req.on("end", () => {
        exports.push({ path: req.url ?? "", body: JSON.parse(body) as OtlpJson });
        res.writeHead(200, { "content-type": "application/json" }).end("{}");
      });
    });
    collector.listen(0, "127.0.0.1");
    await once(collector, "listening");
    collectorUrl = `http://127.0.0.1:${(collector.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    collector?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  const exportedSpans = () =>
    exports.flatMap((e) =>
      e.body.resourceSpans.flatMap((r) =>
        r.scopeSpans.flatMap((s) => s.spans.map((span) => ({ ...span, path: e.path, service: r.resource.attributes.find((a) => a.key === "service.name")?.value.stringValue }))),
      ),
    );

  it("exports OTLP/JSON to the endpoint, as the named service, sampling by the parent when the sampler says so", async () => {
    const svc = await spawnService({
      DATABASE_URL: `sqlite:${join(dir, "otel.db")}`,
      OTEL_TRACES_EXPORTER: "otlp",
      OTEL_EXPORTER_OTLP_PROTOCOL: "http/json",
      OTEL_EXPORTER_OTLP_ENDPOINT: collectorUrl,
      OTEL_SERVICE_NAME: "tokens-under-test",
      // Root spans are never sampled; calls whose caller sampled its trace are.
      OTEL_TRACES_SAMPLER: "parentbased_traceidratio",
      OTEL_TRACES_SAMPLER_ARG: "0",
      OTEL_BSP_SCHEDULE_DELAY: "50",
    });
    try {
      const on = await svc.waitForLine((l) => l.msg === "tracing on");
      expect(on.tracing).toBe("traces to otlp (http/json), sampler parentbased_traceidratio 0");
      const client = connectJsonClient(svc.httpUrl!);
      const unsampled = callerTrace();
      const sampled = callerTrace();
      const untraced = `no-trace-${randomBytes(4).toString("hex")}`;
      await client.getToken({ userId: untraced, provider: "none" }).catch(() => undefined);
      await client.getToken({ userId: "u1", provider: "none" }, { headers: { traceparent: unsampled.traceparent.replace(/-01$/, "-00") } }).catch(() => undefined);
      await client.getToken({ userId: "u1", provider: "none" }, { headers: { traceparent: sampled.traceparent } }).catch(() => undefined);
      const span = await eventually(() => {
        const s = exportedSpans().find((x) => x.traceId === sampled.traceId && x.kind === 2);
        expect(s).toBeDefined();
        return s!;
      });
      expect(span).toMatchObject({ name: "tokenservice.v1.TokenService/GetToken", parentSpanId: sampled.spanId, kind: 2, path: "/v1/traces", service: "tokens-under-test" });
      svc.kill("SIGTERM");
      await svc.exited;
      // Shutdown exported what was left; the unsampled and the untraced calls are not there.
      expect(exportedSpans().filter((x) => x.traceId === unsampled.traceId)).toHaveLength(0);
      expect(exportedSpans().filter((x) => x.kind === 2)).toHaveLength(1);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("is off without the variables, and a bad sampler stops start-up naming the variable", async () => {
    const before = exports.length;
    const off = await spawnService({ DATABASE_URL: `sqlite:${join(dir, "off.db")}` });
    try {
      await off.waitForLine((l) => typeof l.msg === "string" && l.msg.startsWith("tracing off"));
      await connectJsonClient(off.httpUrl!).getToken({ userId: "u", provider: "none" }, { headers: { traceparent: callerTrace().traceparent } }).catch(() => undefined);
    } finally {
      off.kill("SIGTERM");
      await off.exited;
    }
    expect(exports.length).toBe(before);

    const bad = await spawnService(
      { DATABASE_URL: `sqlite:${join(dir, "bad.db")}`, OTEL_EXPORTER_OTLP_ENDPOINT: collectorUrl, OTEL_TRACES_SAMPLER: "sometimes" },
      { expectListening: false },
    );
    expect(await bad.exited).not.toBe(0);
    expect(bad.stderr() + bad.stdout()).toContain('OTEL_TRACES_SAMPLER: unknown sampler "sometimes"');
  });
});

interface OtlpJson {
  resourceSpans: Array<{
    resource: { attributes: Array<{ key: string; value: { stringValue?: string } }> };
    scopeSpans: Array<{ spans: Array<{ traceId: string; spanId: string; parentSpanId?: string; name: string; kind: number }> }>;
  }>;
}
