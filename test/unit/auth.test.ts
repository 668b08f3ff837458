import { createHash } from "node:crypto";
import { describe, expect, it } from "vitest";
import type { CallerConfig, RpcName } from "../../src/config.js";
import { createLogger } from "../../src/logger.js";
import { CallerDirectory } from "../../src/rpc/auth.js";
import { RpcChain, RpcFailure, type IncomingCall } from "../../src/rpc/chain.js";
import { Code, type RpcStatus } from "../../src/rpc/errors.js";
import { PermissionDeniedError, SessionNotFoundError } from "../../src/sessions/errors.js";
import { LogSink } from "../helpers/service.js";

const digestOf = (secret: string) => createHash("sha256").update(secret, "utf8").digest();

interface CallerOptions {
  secret?: string;
  mtlsSubject?: string;
  rpcs?: RpcName[];
  providers?: string[];
  rateLimit?: { perSecond: number; burst: number };
}

/** A caller as loadConfig would produce it. */
function caller(name: string, o: CallerOptions): CallerConfig {
  return {
    name,
    tokenSha256: o.secret === undefined ? undefined : digestOf(o.secret),
    mtlsSubject: o.mtlsSubject,
    rpcs: o.rpcs ? new Set(o.rpcs) : undefined,
    providers: o.providers ? new Set(o.providers) : undefined,
    resources: undefined,
    rateLimit: o.rateLimit,
    userBinding: "none",
  };
}

const GATEWAY_SECRET = "gw-secret-Zq8vT3pLm2XcR7nK";
const OPS_SECRET = "ops-secret-Hf4wJ9sDk1BvN6yQ";
const CHAT_SECRET = "chat-secret-Pa5uE2rGt8WoL3iM";

const gateway = caller("auth-gateway", { secret: GATEWAY_SECRET, rpcs: ["StoreSession", "RevokeSession"] });
const ops = caller("ops", { secret: OPS_SECRET });
const chat = caller("chat-gateway", { mtlsSubject: "Chat-Gateway.Internal", rpcs: ["GetToken"], providers: ["corp"] });
const limited = caller("limited", { secret: CHAT_SECRET, rpcs: ["GetToken"], rateLimit: { perSecond: 0.001, burst: 3 } });

describe("CallerDirectory.identify", () => {
  const directory = new CallerDirectory([gateway, ops, chat]);

  it("is enabled with callers and disabled without", () => {
    expect(directory.enabled).toBe(true);
    expect(new CallerDirectory([]).enabled).toBe(false);
  });

  it('returns "none" with no header and no peer names', () => {
    expect(directory.identify(null, [])).toBe("none");
  });

  it('returns "none" when the peer names match no mtls_subject', () => {
    expect(directory.identify(null, ["someone-else.internal", "other"])).toBe("none");
  });

  it("finds the caller whose SHA-256 matches the bearer secret", () => {
    expect(directory.identify(`Bearer ${GATEWAY_SECRET}`, [])).toBe(gateway);
    expect(directory.identify(`Bearer ${OPS_SECRET}`, [])).toBe(ops);
  });

  it("accepts the scheme in any case, and spaces or tabs around the secret", () => {
    expect(directory.identify(`bearer ${OPS_SECRET}`, [])).toBe(ops);
    expect(directory.identify(`BEARER ${OPS_SECRET}`, [])).toBe(ops);
    expect(directory.identify(`Bearer \t ${OPS_SECRET} `, [])).toBe(ops);
  });

  it('returns "bad" for a secret that matches no caller', () => {
    expect(directory.identify("Bearer not-a-known-secret", [])).toBe("bad");
    expect(directory.identify(`Bearer ${OPS_SECRET}x`, [])).toBe("bad");
    // The digest itself is not a credential.
    expect(directory.identify(`Bearer ${digestOf(OPS_SECRET).toString("hex")}`, [])).toBe("bad");
  });

  it.each([
    ["Basic x", "Basic dXNlcjpwYXNz"],
    ["a bare scheme", "Bearer"],
    ["a scheme and a space", "Bearer "],
    ["two words", "Bearer a b"],
    ["two words, the first valid", `Bearer ${OPS_SECRET} extra`],
    ["no space", `Bearer${OPS_SECRET}`],
    ["an empty header", ""],
    ["the secret alone", OPS_SECRET],
    ["a leading space", ` Bearer ${OPS_SECRET}`],
  ])('returns "bad" for a malformed header: %s', (_label, header) => {
    expect(directory.identify(header, [])).toBe("bad");
  });

  it("matches mtls_subject case-insensitively against any peer name", () => {
    expect(directory.identify(null, ["chat-gateway.internal"])).toBe(chat);
    expect(directory.identify(null, ["CHAT-GATEWAY.INTERNAL"])).toBe(chat);
    expect(directory.identify(null, ["cn-that-does-not-match", "chat-gateway.internal"])).toBe(chat);
  });

  it("judges a request with a header by the header alone", () => {
    // A bad header is "bad" even when the certificate names a valid caller.
    expect(directory.identify("Bearer wrong", ["chat-gateway.internal"])).toBe("bad");
    expect(directory.identify("Basic x", ["chat-gateway.internal"])).toBe("bad");
    // A good header wins over the certificate's caller.
    expect(directory.identify(`Bearer ${OPS_SECRET}`, ["chat-gateway.internal"])).toBe(ops);
  });

  it("never matches a bearer secret against an mtls_subject, or a subject against a secret", () => {
    expect(directory.identify("Bearer chat-gateway.internal", [])).toBe("bad");
    expect(directory.identify(null, [OPS_SECRET])).toBe("none");
  });

  it('without callers, is disabled and identifies nobody ("none" or "bad")', () => {
    const empty = new CallerDirectory([]);
    expect(empty.enabled).toBe(false);
    expect(empty.callers).toEqual([]);
    expect(empty.identify(null, ["chat-gateway.internal"])).toBe("none");
    expect(empty.identify(`Bearer ${OPS_SECRET}`, [])).toBe("bad");
  });
});

// ---------------------------------------------------------------------------
// The RPC chain's admission (authentication, scopes, rate limit), driven
// directly with IncomingCall objects as either listener builds them.

const TOKEN_SERVICE = "tokenservice.v1.TokenService";
const getToken = [TOKEN_SERVICE, "GetToken"] as const;
const storeSession = [TOKEN_SERVICE, "StoreSession"] as const;
const revokeSession = [TOKEN_SERVICE, "RevokeSession"] as const;
const listSessions = [TOKEN_SERVICE, "ListSessions"] as const;
const healthCheck = ["grpc.health.v1.Health", "Check"] as const;
type Method = readonly [string, string];

const PEER = "10.0.0.7:51000";

interface CallOptions {
  authorization?: string;
  peerNames?: string[];
}

/** The IncomingCall a listener would build for a call with these credentials. */
function incoming([service, method]: Method, o: CallOptions = {}): IncomingCall {
  return {
    service,
    method,
    protocol: "grpc",
    peer: PEER,
    authorization: () => o.authorization,
    peerNames: () => o.peerNames ?? [],
    header: () => undefined,
    deadline: undefined,
    isCancelled: () => false,
    onCancel: () => undefined,
  };
}

interface Harness {
  logs: LogSink;
  /** Calls that reached the handler, with the caller and scope the chain gave them. */
  passed: Array<{ rpc: string; caller: string | undefined; providers: ReadonlySet<string> | undefined }>;
  call(method: Method, o?: CallOptions): Promise<string>;
}

function harness(callers: CallerConfig[], handler?: () => void): Harness {
  const logs = new LogSink();
  const chain = new RpcChain(new CallerDirectory(callers), createLogger("info", logs));
  const passed: Harness["passed"] = [];
  return {
    logs,
    passed,
    call: (method, o) =>
      chain.run(incoming(method, o), async (ctx) => {
        handler?.();
        passed.push({ rpc: method[1], caller: ctx.caller, providers: ctx.providers });
        return "answer";
      }),
  };
}

/** Expects the call to fail with an RpcFailure and returns its status. */
async function failure(p: Promise<unknown>): Promise<RpcStatus> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RpcFailure);
  return (err as RpcFailure).status;
}

function auditLines(logs: LogSink) {
  return logs.lines().filter((l) => l.audit === true);
}

const ALL_SECRETS = [GATEWAY_SECRET, OPS_SECRET, CHAT_SECRET];

function expectNoSecret(logs: LogSink, extra: string[] = []): void {
  const text = logs.text();
  for (const s of [...ALL_SECRETS, ...extra]) expect(text).not.toContain(s);
  for (const s of ALL_SECRETS) expect(text).not.toContain(digestOf(s).toString("hex"));
}

describe("RpcChain: authentication", () => {
  const callers = [gateway, ops, chat, limited];

  it("refuses a call without a credential with UNAUTHENTICATED and an audit line", async () => {
    const h = harness(callers);
    const err = await failure(h.call(getToken));
    expect(err.code).toBe(Code.Unauthenticated);
    expect(err.reason).toBe("UNAUTHENTICATED");
    expect(h.passed).toEqual([]);
    const [line, ...more] = auditLines(h.logs);
    expect(more).toEqual([]);
    expect(line).toMatchObject({
      level: "warn",
      audit: true,
      event: "denied",
      caller: null,
      reason: "no_credential",
      rpc: "tokenservice.v1.TokenService/GetToken",
      peer: PEER,
    });
  });

  it("refuses an unknown secret with UNAUTHENTICATED, and the audit line never holds it", async () => {
    const h = harness(callers);
    const wrong = "wrong-secret-Xy7Kq2Lp9Vn4";
    const err = await failure(h.call(getToken, { authorization: `Bearer ${wrong}` }));
    expect(err.code).toBe(Code.Unauthenticated);
    expect(err.message).not.toContain(wrong);
    expect(h.passed).toEqual([]);
    expect(auditLines(h.logs)).toEqual([
      expect.objectContaining({ audit: true, event: "denied", caller: null, reason: "unknown_credential" }),
    ]);
    expectNoSecret(h.logs, [wrong]);
  });

  it("refuses a malformed header even with a valid client certificate", async () => {
    const h = harness(callers);
    const err = await failure(h.call(getToken, { authorization: "Basic x", peerNames: ["chat-gateway.internal"] }));
    expect(err.code).toBe(Code.Unauthenticated);
    expect(auditLines(h.logs)).toEqual([expect.objectContaining({ caller: null, reason: "unknown_credential" })]);
  });

  it("lets grpc.health.v1.Health through without a credential, and writes no audit line", async () => {
    const h = harness(callers);
    await expect(h.call(healthCheck)).resolves.toBe("answer");
    // Even with a bad credential: probes are not authenticated at all.
    await expect(h.call(healthCheck, { authorization: "Bearer wrong" })).resolves.toBe("answer");
    expect(h.passed.map((p) => p.rpc)).toEqual(["Check", "Check"]);
    expect(h.passed.every((p) => p.caller === "anonymous")).toBe(true);
    expect(auditLines(h.logs)).toEqual([]);
  });

  it("gives the handler the caller and its scope, for a bearer caller", async () => {
    const h = harness(callers);
    await h.call(storeSession, { authorization: `Bearer ${GATEWAY_SECRET}` });
    expect(h.passed).toEqual([{ rpc: "StoreSession", caller: "auth-gateway", providers: undefined }]);
    expect(auditLines(h.logs)).toEqual([]);
  });

  it("gives the handler the caller and its providers, for an mTLS caller", async () => {
    const h = harness(callers);
    await h.call(getToken, { peerNames: ["chat-gateway.internal"] });
    expect(h.passed).toEqual([{ rpc: "GetToken", caller: "chat-gateway", providers: new Set(["corp"]) }]);
  });

  it("lets a '*' caller call every TokenService RPC", async () => {
    const h = harness(callers);
    const auth = { authorization: `Bearer ${OPS_SECRET}` };
    for (const m of [getToken, storeSession, revokeSession, listSessions]) await h.call(m, auth);
    expect(h.passed.map((p) => p.rpc)).toEqual(["GetToken", "StoreSession", "RevokeSession", "ListSessions"]);
    expect(h.passed.every((p) => p.caller === "ops")).toBe(true);
  });
});

describe("RpcChain: authorization", () => {
  const callers = [gateway, ops, chat, limited];

  it("refuses an RPC outside the caller's rpcs with PERMISSION_DENIED, naming the caller", async () => {
    const h = harness(callers);
    const auth = { authorization: `Bearer ${GATEWAY_SECRET}` };
    const err = await failure(h.call(getToken, auth));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(err.reason).toBe("RPC_NOT_ALLOWED");
    expect(err.message).toBe("caller auth-gateway may not call GetToken");
    expect(h.passed).toEqual([]);
    expect(auditLines(h.logs)).toEqual([
      expect.objectContaining({
        audit: true,
        event: "denied",
        caller: "auth-gateway",
        reason: "rpc_not_allowed",
        rpc: "tokenservice.v1.TokenService/GetToken",
        peer: PEER,
      }),
    ]);
    // Its own RPCs still pass.
    await h.call(revokeSession, auth);
    expect(h.passed.map((p) => p.rpc)).toEqual(["RevokeSession"]);
    expectNoSecret(h.logs);
  });

  it("applies a caller's rpcs to ProviderService too, by RPC name", async () => {
    const h = harness(callers);
    const auth = { authorization: `Bearer ${GATEWAY_SECRET}` };
    const err = await failure(h.call(["tokenservice.v1.ProviderService", "RegisterProvider"], auth));
    expect(err).toMatchObject({ code: Code.PermissionDenied, reason: "RPC_NOT_ALLOWED" });
    await h.call(["tokenservice.v1.ProviderService", "ListProviders"], { authorization: `Bearer ${OPS_SECRET}` });
    expect(h.passed.map((p) => p.rpc)).toEqual(["ListProviders"]);
  });

  it("refuses an mTLS caller outside its rpcs", async () => {
    const h = harness(callers);
    const err = await failure(h.call(storeSession, { peerNames: ["chat-gateway.internal"] }));
    expect(err.code).toBe(Code.PermissionDenied);
    expect(auditLines(h.logs)).toEqual([expect.objectContaining({ caller: "chat-gateway", reason: "rpc_not_allowed" })]);
  });

  it("writes an audit line naming the caller when the handler refuses a provider, and answers PERMISSION_DENIED", async () => {
    const h = harness(callers, () => {
      throw new PermissionDeniedError("google");
    });
    const err = await failure(h.call(getToken, { peerNames: ["chat-gateway.internal"] }));
    expect(err).toMatchObject({ code: Code.PermissionDenied, reason: "PROVIDER_NOT_ALLOWED", metadata: { provider: "google" } });
    expect(auditLines(h.logs)).toEqual([
      expect.objectContaining({ audit: true, event: "denied", caller: "chat-gateway", reason: "provider_not_allowed" }),
    ]);
  });

  it("writes no audit line for other handler errors, and maps them to their status", async () => {
    const h = harness(callers, () => {
      throw new SessionNotFoundError();
    });
    const err = await failure(h.call(getToken, { authorization: `Bearer ${OPS_SECRET}` }));
    expect(err).toMatchObject({ code: Code.NotFound, reason: "SESSION_NOT_FOUND" });
    expect(auditLines(h.logs)).toEqual([]);
  });
});

describe("RpcChain: rate limit", () => {
  it("answers RESOURCE_EXHAUSTED after the burst, with an audit line naming the caller", async () => {
    // 0.001 per second: no token comes back during the test.
    const h = harness([gateway, limited]);
    const auth = { authorization: `Bearer ${CHAT_SECRET}` };
    for (let i = 0; i < 3; i++) await h.call(getToken, auth);
    const err = await failure(h.call(getToken, auth));
    expect(err.code).toBe(Code.ResourceExhausted);
    expect(err.reason).toBe("RATE_LIMITED");
    expect(err.message).toBe("caller limited is over its rate limit");
    expect(h.passed).toHaveLength(3);
    expect(auditLines(h.logs)).toEqual([
      expect.objectContaining({ audit: true, event: "denied", caller: "limited", reason: "rate_limited" }),
    ]);
    expectNoSecret(h.logs);
  });

  it("keeps one bucket per caller: another caller is not limited", async () => {
    const other = caller("other", { secret: GATEWAY_SECRET, rateLimit: { perSecond: 0.001, burst: 1 } });
    const h = harness([other, limited]);
    await h.call(getToken, { authorization: `Bearer ${GATEWAY_SECRET}` });
    expect((await failure(h.call(getToken, { authorization: `Bearer ${GATEWAY_SECRET}` }))).code).toBe(
      Code.ResourceExhausted,
    );
    for (let i = 0; i < 3; i++) await h.call(getToken, { authorization: `Bearer ${CHAT_SECRET}` });
    expect(h.passed.map((p) => p.caller)).toEqual(["other", "limited", "limited", "limited"]);
  });

  it("does not spend tokens on calls refused before the limit (unauthenticated or outside rpcs)", async () => {
    const h = harness([limited]);
    await failure(h.call(getToken));
    await failure(h.call(storeSession, { authorization: `Bearer ${CHAT_SECRET}` }));
    for (let i = 0; i < 3; i++) await h.call(getToken, { authorization: `Bearer ${CHAT_SECRET}` });
    expect(h.passed).toHaveLength(3);
  });

  it("gives a separate bucket to each chain (per replica)", async () => {
    const a = harness([limited]);
    const b = harness([limited]);
    const auth = { authorization: `Bearer ${CHAT_SECRET}` };
    for (let i = 0; i < 3; i++) await a.call(getToken, auth);
    await b.call(getToken, auth);
    expect(b.passed).toHaveLength(1);
  });
});

describe("RpcChain: no callers configured", () => {
  it('lets every call through as "anonymous" with full scope, and writes no audit line', async () => {
    const h = harness([]);
    await h.call(getToken);
    await h.call(storeSession, { authorization: "Bearer anything-at-all" });
    await h.call(listSessions, { authorization: "Basic x" });
    await h.call(healthCheck);
    expect(h.passed).toEqual([
      { rpc: "GetToken", caller: "anonymous", providers: undefined },
      { rpc: "StoreSession", caller: "anonymous", providers: undefined },
      { rpc: "ListSessions", caller: "anonymous", providers: undefined },
      { rpc: "Check", caller: "anonymous", providers: undefined },
    ]);
    expect(auditLines(h.logs)).toEqual([]);
    expect(h.logs.text()).not.toContain("anything-at-all");
  });

  it('audits a handler\'s provider denial as "anonymous"', async () => {
    const h = harness([], () => {
      throw new PermissionDeniedError("corp");
    });
    expect((await failure(h.call(getToken))).reason).toBe("PROVIDER_NOT_ALLOWED");
    expect(auditLines(h.logs)).toEqual([expect.objectContaining({ caller: "anonymous", reason: "provider_not_allowed" })]);
  });
});

describe("RpcChain: audit lines never hold a credential", () => {
  it("over a mix of denials", async () => {
    const h = harness([gateway, ops, chat, limited]);
    const attempts: CallOptions[] = [
      {},
      { authorization: "Bearer wrong-one-Tq9Wv2" },
      { authorization: `Basic ${Buffer.from(`user:${OPS_SECRET}`).toString("base64")}` },
      { authorization: `Bearer ${OPS_SECRET} ${GATEWAY_SECRET}` },
      { authorization: `Bearer ${GATEWAY_SECRET}` },
    ];
    for (const o of attempts) await failure(h.call(getToken, o));
    for (let i = 0; i < 4; i++) await h.call(getToken, { authorization: `Bearer ${CHAT_SECRET}` }).catch(() => undefined);
    const lines = auditLines(h.logs);
    expect(lines.map((l) => l.reason)).toEqual([
      "no_credential",
      "unknown_credential",
      "unknown_credential",
      "unknown_credential",
      "rpc_not_allowed",
      "rate_limited",
    ]);
    for (const l of lines) {
      expect(l).toMatchObject({ audit: true, event: "denied", msg: "call denied" });
      expect(l.caller === null || typeof l.caller === "string").toBe(true);
      expect(l).not.toHaveProperty("authorization");
    }
    expectNoSecret(h.logs, ["wrong-one-Tq9Wv2", Buffer.from(`user:${OPS_SECRET}`).toString("base64")]);
  });
});
