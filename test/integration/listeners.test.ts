import { createHash } from "node:crypto";
import { toJson, type DescMessage, type DescMethodUnary, type MessageInitShape, type MessageShape } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient, type Transport } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { TokenKind, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { grpcJsRawClient, type CallOutcome } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * One implementation behind two listeners: every RPC, its success case and
 * its error cases, through every protocol the service speaks, must give the
 * same code, the same ErrorInfo reason and metadata, and the same response.
 */

interface CallOptions {
  bearer?: string;
  timeoutMs?: number;
}

/** One way of calling the service. */
interface Caller {
  name: string;
  listener: "grpc" | "http";
  call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options?: CallOptions,
  ): Promise<CallOutcome<MessageShape<O>>>;
  close(): void;
}

function connectCaller(name: string, listener: "grpc" | "http", transport: Transport): Caller {
  const client = createClient(TokenService, transport) as unknown as Record<
    string,
    (req: unknown, options: { headers?: Record<string, string>; timeoutMs?: number }) => Promise<unknown>
  >;
  return {
    name,
    listener,
    async call(method, request, options = {}) {
      try {
        const response = await client[method.localName]!(request, {
          headers: options.bearer ? { authorization: `Bearer ${options.bearer}` } : undefined,
          timeoutMs: options.timeoutMs,
        });
        return { code: 0, response: response as never };
      } catch (e) {
        const err = ConnectError.from(e);
        const [info] = err.findDetails(ErrorInfoSchema);
        return { code: err.code, reason: info?.reason, metadata: info ? { ...info.metadata } : undefined };
      }
    },
    close: () => undefined,
  };
}

function grpcJsCaller(url: string): Caller {
  const raw = grpcJsRawClient(url);
  return { name: "grpc-js", listener: "grpc", call: (m, r, o) => raw.call(TokenService, m, r, o), close: () => raw.close() };
}

/** Every client: stock grpc-js and Connect-ES's gRPC on the gRPC listener; Connect (JSON, binary) and gRPC-Web on the HTTP one. */
function callersFor(svc: TestService): Caller[] {
  const http = { baseUrl: svc.httpUrl, httpVersion: "1.1" as const };
  return [
    grpcJsCaller(svc.url),
    connectCaller("connect-es grpc", "grpc", createGrpcTransport({ baseUrl: svc.url })),
    connectCaller("connect json", "http", createConnectTransport({ ...http, useBinaryFormat: false })),
    connectCaller("connect binary", "http", createConnectTransport({ ...http, useBinaryFormat: true })),
    connectCaller("grpc-web", "http", createGrpcWebTransport({ ...http, useBinaryFormat: true })),
  ];
}

/** A step of a transcript: what came back, with per-run values (ids, creation times) replaced by placeholders. */
interface Step {
  step: string;
  code: number;
  reason?: string;
  metadata?: Record<string, string>;
  response?: unknown;
}

const VOLATILE = new Set(["sessionId", "createdAt", "lastUsedAt"]);

function normalise(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(normalise);
  if (value && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, VOLATILE.has(k) ? `<${k}>` : normalise(v)]));
  }
  return value;
}

async function step<O extends DescMessage>(
  name: string,
  outcome: Promise<CallOutcome<MessageShape<O>>>,
  schema: O,
): Promise<Step & { raw?: MessageShape<O> }> {
  const o = await outcome;
  const s: Step & { raw?: MessageShape<O> } = { step: name, code: o.code };
  if (o.reason !== undefined) s.reason = o.reason;
  if (o.metadata !== undefined) s.metadata = o.metadata;
  if (o.response !== undefined) Object.assign(s, { response: normalise(toJson(schema, o.response)), raw: o.response });
  return s;
}

/** A step without its raw response, for comparison. */
function plain({ raw: _raw, ...rest }: Step & { raw?: unknown }): Step {
  return rest;
}

const M = TokenService.method;
const EXPIRES_AT = new Date(Math.floor(Date.now() / 1000) * 1000 + 3_600_000);
/** An access token that expired a minute ago, the same for every client. */
const EXPIRED_AT = new Date(Math.floor(Date.now() / 1000) * 1000 - 60_000);

describe("both listeners, every protocol: one behaviour", () => {
  let provider: TestProvider;
  let svc: TestService;

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        refresh: { lease_seconds: 10, provider_timeout_seconds: 5, max_attempts: 2, retry_base_delay_ms: 10, background: { enabled: false } },
        limits: { max_message_bytes: 65_536 },
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  /** The whole life of a few sessions, with every error an RPC can give a well-behaved caller. */
  async function transcript(c: Caller, user: string): Promise<Step[]> {
    const steps: Step[] = [];
    const push = (s: Step & { raw?: unknown }) => {
      steps.push(plain(s));
      return s;
    };
    const tokens = { accessToken: "at-parity-0123456789", refreshToken: "rt-parity", scope: "openid", expiresAt: timestampFromDate(EXPIRES_AT) };
    const stored = push(await step("StoreSession", c.call(M.storeSession, { userId: user, provider: "corp", tokens }), M.storeSession.output));
    const sessionId = (stored.raw as { sessionId?: string } | undefined)?.sessionId ?? "";
    expect(sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
    push(await step("GetToken by session", c.call(M.getToken, { userId: user, sessionId }), M.getToken.output));
    push(await step("GetToken by provider", c.call(M.getToken, { userId: user, provider: "corp" }), M.getToken.output));
    push(await step("GetToken id_token", c.call(M.getToken, { userId: user, sessionId, kind: TokenKind.ID }), M.getToken.output));
    push(await step("GetToken unknown kind", c.call(M.getToken, { userId: user, sessionId, kind: 99 as TokenKind }), M.getToken.output));
    push(await step("GetToken neither session nor provider", c.call(M.getToken, { userId: user }), M.getToken.output));
    push(await step("GetToken another user's session", c.call(M.getToken, { userId: `${user}-x`, sessionId }), M.getToken.output));
    push(await step("ListSessions", c.call(M.listSessions, { userId: user }), M.listSessions.output));
    push(await step("RevokeSession", c.call(M.revokeSession, { userId: user, sessionId }), M.revokeSession.output));
    push(await step("GetToken after revoke", c.call(M.getToken, { userId: user, sessionId }), M.getToken.output));
    push(await step("RevokeSession again", c.call(M.revokeSession, { userId: user, sessionId }), M.revokeSession.output));
    push(await step("StoreSession without user", c.call(M.storeSession, { userId: "", provider: "corp", tokens }), M.storeSession.output));
    push(await step("StoreSession unknown provider", c.call(M.storeSession, { userId: user, provider: "nope", tokens }), M.storeSession.output));
    push(
      await step(
        "StoreSession over the message limit",
        c.call(M.storeSession, { userId: user, provider: "corp", tokens: { ...tokens, accessToken: "a".repeat(70_000) } }),
        M.storeSession.output,
      ),
    );
    push(await step("ListSessions without user", c.call(M.listSessions, { userId: "" }), M.listSessions.output));

    // The provider refuses a refresh: REAUTH_REQUIRED, then the same answer without asking it again.
    const expired = { ...tokens, expiresAt: timestampFromDate(EXPIRED_AT) };
    const bogus = push(
      await step("StoreSession expired", c.call(M.storeSession, { userId: user, provider: "corp", tokens: { ...expired, refreshToken: "not-a-refresh-token" } }), M.storeSession.output),
    );
    const refreshes = provider.stats.refreshes;
    push(await step("GetToken refused refresh", c.call(M.getToken, { userId: user, sessionId: (bogus.raw as { sessionId: string }).sessionId }), M.getToken.output));
    push(await step("GetToken refused refresh again", c.call(M.getToken, { userId: user, sessionId: (bogus.raw as { sessionId: string }).sessionId }), M.getToken.output));
    expect(provider.stats.refreshes - refreshes).toBe(1);

    // The provider fails (503 twice: both attempts): UNAVAILABLE, the session is kept.
    const login = await provider.login(user);
    const real = await c.call(M.storeSession, {
      userId: user,
      provider: "corp",
      tokens: { ...expired, accessToken: login.access_token, refreshToken: login.refresh_token },
    });
    provider.faults.push({ kind: "status", status: 503 }, { kind: "status", status: 503 });
    push(await step("GetToken provider down", c.call(M.getToken, { userId: user, sessionId: real.response!.sessionId }), M.getToken.output));
    // The provider is slow and the caller's deadline passes first: DEADLINE_EXCEEDED; the refresh goes on.
    provider.faults.push({ kind: "delay", ms: 2500 });
    const late = await step(
      "GetToken past the caller's deadline",
      c.call(M.getToken, { userId: user, sessionId: real.response!.sessionId }, { timeoutMs: 1000 }),
      M.getToken.output,
    );
    // The service answers DEADLINE_EXCEEDED (reason DEADLINE_EXCEEDED) ~100 ms before the deadline; a client whose
    // own timer fires first reports the same code without the server's details, so only the code is compared.
    push({ step: late.step, code: late.code });
    if (late.reason !== undefined) expect(late.reason).toBe("DEADLINE_EXCEEDED");

    push(await step("RevokeUserSessions", c.call(M.revokeUserSessions, { userId: user }), M.revokeUserSessions.output));
    push(await step("ListSessions after", c.call(M.listSessions, { userId: user }), M.listSessions.output));
    return steps;
  }

  it("gives the same codes, ErrorInfo and responses for every RPC through gRPC, Connect JSON and binary, and gRPC-Web", async () => {
    const callers = callersFor(svc);
    const transcripts: Step[][] = [];
    try {
      for (const [i, c] of callers.entries()) transcripts.push(await transcript(c, `parity-${i}`));
    } finally {
      for (const c of callers) c.close();
    }
    const [reference] = transcripts;
    // The reference (stock grpc-js) shows what every step must give.
    const byStep = Object.fromEntries(reference!.map((s) => [s.step, s]));
    expect(byStep["StoreSession"]).toMatchObject({ code: 0, response: { sessionId: "<sessionId>", expiresAt: EXPIRES_AT.toISOString().replace(".000", "") } });
    expect(byStep["GetToken by session"]).toMatchObject({
      code: 0,
      response: { token: "at-parity-0123456789", tokenType: "Bearer", scope: "openid", sessionId: "<sessionId>" },
    });
    expect(byStep["GetToken by provider"]!.response).toEqual(byStep["GetToken by session"]!.response);
    const errors: Array<[string, Code, string | undefined, Record<string, string>?]> = [
      ["GetToken id_token", Code.FailedPrecondition, "NO_ID_TOKEN"],
      ["GetToken unknown kind", Code.InvalidArgument, "INVALID_ARGUMENT", { field: "kind" }],
      ["GetToken neither session nor provider", Code.InvalidArgument, "INVALID_ARGUMENT", { field: "provider" }],
      ["GetToken another user's session", Code.NotFound, "SESSION_NOT_FOUND"],
      ["GetToken after revoke", Code.NotFound, "SESSION_NOT_FOUND"],
      ["RevokeSession again", Code.NotFound, "SESSION_NOT_FOUND"],
      ["StoreSession without user", Code.InvalidArgument, "INVALID_ARGUMENT", { field: "user_id" }],
      ["StoreSession unknown provider", Code.InvalidArgument, "INVALID_ARGUMENT", { field: "provider" }],
      ["StoreSession over the message limit", Code.ResourceExhausted, undefined],
      ["ListSessions without user", Code.InvalidArgument, "INVALID_ARGUMENT", { field: "user_id" }],
      ["GetToken refused refresh", Code.FailedPrecondition, "REAUTH_REQUIRED", { provider: "corp", provider_error: "invalid_grant" }],
      ["GetToken refused refresh again", Code.FailedPrecondition, "REAUTH_REQUIRED", { provider: "corp", provider_error: "invalid_grant" }],
      ["GetToken provider down", Code.Unavailable, "PROVIDER_UNAVAILABLE", { provider: "corp", cause: "http_503" }],
      ["GetToken past the caller's deadline", Code.DeadlineExceeded, undefined],
    ];
    for (const [name, code, reason, metadata] of errors) {
      expect(byStep[name], name).toMatchObject({ code, ...(reason ? { reason } : {}), ...(metadata ? { metadata } : {}) });
      if (!reason) expect(byStep[name], name).not.toHaveProperty("reason");
    }
    expect(byStep["ListSessions"]!.response).toMatchObject({ sessions: [{ provider: "corp", status: "SESSION_STATUS_ACTIVE", refreshable: true }] });
    expect(byStep["RevokeSession"]).toEqual({ step: "RevokeSession", code: 0, response: {} });
    expect(byStep["RevokeUserSessions"]!.response).toEqual({ revoked: 2 });
    expect(byStep["ListSessions after"]!.response).toEqual({});
    // And every other client got exactly the same, step by step.
    for (const [i, t] of transcripts.entries()) expect(t, callers[i]!.name).toEqual(reference);
  });

  it("logs each call once with its protocol, and the same code and reason on both listeners", () => {
    const lines = svc.logs.lines().filter((l) => l.msg === "rpc" && l.rpc === "tokenservice.v1.TokenService/GetToken");
    const protocols = new Set(lines.map((l) => l.protocol));
    expect(protocols).toEqual(new Set(["grpc", "connect", "grpc_web"]));
    const notFound = lines.filter((l) => l.reason === "SESSION_NOT_FOUND");
    // Two NOT_FOUND GetTokens per client: five clients.
    expect(notFound).toHaveLength(10);
    for (const l of notFound) expect(l).toMatchObject({ level: "info", code: "not_found", caller: "anonymous" });
  });
});

describe("both listeners share the callers, their scopes and their rate limits", () => {
  const FULL = "parity-full-credential-7Kq2";
  const STORE_ONLY = "parity-store-credential-9Xw4";
  const LIMITED = "parity-limited-credential-3Lm8";
  const sha = (s: string) => createHash("sha256").update(s).digest("hex");
  let provider: TestProvider;
  let svc: TestService;

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        providers: [provider.configEntry("corp"), provider.configEntry("other")],
        callers: [
          { name: "full", token_sha256: sha(FULL), rpcs: ["*"], providers: ["corp"] },
          { name: "store-only", token_sha256: sha(STORE_ONLY), rpcs: ["StoreSession"] },
          { name: "limited", token_sha256: sha(LIMITED), rpcs: ["GetToken"], rate_limit: { per_second: 0.001, burst: 5 } },
        ],
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  it("refuses and admits the same calls through every protocol, with one audit line each", async () => {
    const callers = callersFor(svc);
    const store = { provider: "corp", tokens: { accessToken: "at-callers", expiresIn: 600n } };
    const results: Step[][] = [];
    try {
      for (const [i, c] of callers.entries()) {
        const user = `callers-${i}`;
        results.push(
          [
          await step("no credential", c.call(M.getToken, { userId: user, provider: "corp" }), M.getToken.output),
          await step("unknown credential", c.call(M.getToken, { userId: user, provider: "corp" }, { bearer: "nobody" }), M.getToken.output),
          await step("outside its rpcs", c.call(M.getToken, { userId: user, provider: "corp" }, { bearer: STORE_ONLY }), M.getToken.output),
          await step(
            "outside its providers",
            c.call(M.storeSession, { ...store, userId: user, provider: "other" }, { bearer: FULL }),
            M.storeSession.output,
          ),
          await step("allowed", c.call(M.listSessions, { userId: user }, { bearer: FULL }), M.listSessions.output),
          ].map(plain),
        );
      }
    } finally {
      for (const c of callers) c.close();
    }
    expect(results[0]).toEqual([
      { step: "no credential", code: Code.Unauthenticated, reason: "UNAUTHENTICATED", metadata: {} },
      { step: "unknown credential", code: Code.Unauthenticated, reason: "UNAUTHENTICATED", metadata: {} },
      { step: "outside its rpcs", code: Code.PermissionDenied, reason: "RPC_NOT_ALLOWED", metadata: {} },
      { step: "outside its providers", code: Code.PermissionDenied, reason: "PROVIDER_NOT_ALLOWED", metadata: { provider: "other" } },
      { step: "allowed", code: 0, response: {} },
    ]);
    for (const r of results) expect(r).toEqual(results[0]);
    const audit = svc.logs.lines().filter((l) => l.audit === true && l.event === "denied");
    expect(audit).toHaveLength(4 * callers.length);
    expect(new Set(audit.map((l) => l.protocol))).toEqual(new Set(["grpc", "connect", "grpc_web"]));
    for (const secret of [FULL, STORE_ONLY, LIMITED]) expect(svc.logs.text()).not.toContain(secret);
  });

  it("keeps one rate-limit bucket per caller across both listeners", async () => {
    const callers = callersFor(svc);
    try {
      const outcomes: number[] = [];
      // Burst 5: the sixth call is refused, whichever listener it comes through.
      for (const c of [...callers, callers[0]!]) {
        outcomes.push((await c.call(M.getToken, { userId: "limited-user", provider: "corp" }, { bearer: LIMITED })).code);
      }
      expect(outcomes).toEqual([Code.NotFound, Code.NotFound, Code.NotFound, Code.NotFound, Code.NotFound, Code.ResourceExhausted]);
      const refused = await callers[2]!.call(M.getToken, { userId: "limited-user", provider: "corp" }, { bearer: LIMITED });
      expect(refused).toMatchObject({ code: Code.ResourceExhausted, reason: "RATE_LIMITED" });
    } finally {
      for (const c of callers) c.close();
    }
  });
});

describe("the HTTP listener switched off", () => {
  it("serves gRPC only, and says so at start-up", async () => {
    const provider = await startTestProvider();
    const svc = await startService({ dialect: "sqlite", provider, env: { TOKEN_SERVICE_HTTP_ADDR: "off" } });
    try {
      expect(svc.app.http).toBeUndefined();
      expect(svc.app.httpUrl).toBeUndefined();
      expect(svc.logs.lines().find((l) => l.msg === "token service listening")).toMatchObject({ httpAddr: "off" });
      const stored = await svc.client.storeSession({ userId: "solo", provider: "corp", tokens: { accessToken: "at-solo", expiresIn: 60n } });
      expect((await svc.client.getToken({ userId: "solo", sessionId: stored.sessionId })).token).toBe("at-solo");
    } finally {
      await svc.close();
      await provider.close();
    }
  });
});
