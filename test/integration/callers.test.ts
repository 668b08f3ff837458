import { createHash } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { connect as tlsConnect } from "node:tls";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { ServerReflection } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { SessionStatus } from "../../gen/tokenservice/v1/token_service_pb.js";
import { makeCertificates, type TestCertificates } from "../helpers/certs.js";
import {
  connectGrpcClient,
  connectJsonClient,
  grpcJsClient,
  grpcWebClient,
  type ClientCredentials,
  type GrpcJsError,
} from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { codeOf } from "../helpers/failure.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const SECRETS = {
  authGateway: "auth-gateway-credential-0123456789abcdef",
  ops: "ops-credential-fedcba9876543210",
  otherScope: "other-scope-credential-5555",
};

function reasonOf(err: unknown): string | undefined {
  return err instanceof ConnectError ? err.findDetails(ErrorInfoSchema)[0]?.reason : undefined;
}

describe("callers: TLS, mTLS, bearer credentials, scopes and rate limits", () => {
  let dir: string;
  let certs: TestCertificates;
  let provider: TestProvider;
  let svc: TestService;
  let chatCert: { cert: Buffer; key: Buffer };

  const as = (creds: ClientCredentials) => connectGrpcClient(svc.url, { ca: certs.ca, ...creds });

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-callers-"));
    [certs, provider] = await Promise.all([makeCertificates(dir), startTestProvider()]);
    chatCert = await certs.client("chat-gateway", "chat-gateway.internal");
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        providers: [provider.configEntry("corp"), provider.configEntry("other")],
        tls: { cert_file: certs.serverCertFile, key_file: certs.serverKeyFile, client_ca_file: certs.caFile },
        callers: [
          {
            name: "auth-gateway",
            token_sha256: sha256(SECRETS.authGateway),
            rpcs: ["StoreSession", "RevokeSession", "RevokeUserSessions", "ListSessions"],
          },
          { name: "chat-gateway", mtls_subject: "chat-gateway.internal", rpcs: ["GetToken"], providers: ["corp"] },
          { name: "ops", token_sha256: sha256(SECRETS.ops), rpcs: ["*"], rate_limit: { per_second: 1, burst: 5 } },
          { name: "other-only", token_sha256: sha256(SECRETS.otherScope), rpcs: ["*"], providers: ["other"] },
        ],
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  async function storeAsGateway(user: string) {
    const tokens = await provider.login(user);
    const { sessionId } = await as({ bearer: SECRETS.authGateway }).storeSession({
      userId: user,
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, idToken: tokens.id_token, expiresIn: 300n },
    });
    return { tokens, sessionId };
  }

  it("serves over TLS and recognises an mTLS caller by its certificate's DNS SAN", async () => {
    expect(svc.url.startsWith("https://")).toBe(true);
    const { tokens, sessionId } = await storeAsGateway("amy");
    const chat = as({ cert: chatCert.cert, key: chatCert.key });
    expect((await chat.getToken({ userId: "amy", sessionId })).token).toBe(tokens.access_token);
    const viaGrpcJs = grpcJsClient(svc.url, { ca: certs.ca, cert: chatCert.cert, key: chatCert.key });
    try {
      expect((await viaGrpcJs.call("GetToken", { user_id: "amy", session_id: sessionId })).token).toBe(tokens.access_token);
    } finally {
      viaGrpcJs.close();
    }
    const rpcLine = svc.logs.lines().find((l) => l.msg === "rpc" && l.caller === "chat-gateway");
    expect(rpcLine).toBeDefined();
  });

  it("serves Connect and gRPC-Web on the HTTP listener over the same TLS, by ALPN HTTP/2 or HTTP/1.1, with the same callers", async () => {
    expect(svc.httpUrl.startsWith("https://")).toBe(true);
    const { port } = new URL(svc.httpUrl);
    const alpn = (protocols: string[]) =>
      new Promise<string | false>((resolve, reject) => {
        const socket = tlsConnect({ host: "127.0.0.1", port: Number(port), ca: certs.ca, servername: "localhost", ALPNProtocols: protocols }, () => {
          resolve(socket.alpnProtocol ?? false);
          socket.end();
        });
        socket.on("error", reject);
      });
    expect(await alpn(["h2", "http/1.1"])).toBe("h2");
    expect(await alpn(["http/1.1"])).toBe("http/1.1");

    const { tokens, sessionId } = await storeAsGateway("ada");
    const mtls = { ca: certs.ca, cert: chatCert.cert, key: chatCert.key };
    for (const httpVersion of ["1.1", "2"] as const) {
      expect((await connectJsonClient(svc.httpUrl, { ...mtls, httpVersion }).getToken({ userId: "ada", sessionId })).token).toBe(
        tokens.access_token,
      );
      expect((await grpcWebClient(svc.httpUrl, { ...mtls, httpVersion }).getToken({ userId: "ada", sessionId })).token).toBe(
        tokens.access_token,
      );
      const sessions = await connectJsonClient(svc.httpUrl, { ca: certs.ca, bearer: SECRETS.authGateway, httpVersion }).listSessions({ userId: "ada" });
      expect(sessions.sessions.map((s) => s.sessionId)).toEqual([sessionId]);
      // Scopes hold here too: the chat gateway may only call GetToken.
      expect(await codeOf(connectJsonClient(svc.httpUrl, { ...mtls, httpVersion }).listSessions({ userId: "ada" }))).toBe(Code.PermissionDenied);
      // A certificate the CA did not sign identifies nobody on this listener either.
      const rogue = await certs.rogue("chat-gateway.internal");
      const err = await connectJsonClient(svc.httpUrl, { ca: certs.ca, cert: rogue.cert, key: rogue.key, httpVersion })
        .getToken({ userId: "ada", sessionId })
        .catch((e: unknown) => e);
      expect((err as ConnectError).code).toBe(Code.Unauthenticated);
      expect(reasonOf(err)).toBe("UNAUTHENTICATED");
    }
    const lines = svc.logs.lines().filter((l) => l.msg === "rpc" && l.caller === "chat-gateway" && l.code === "ok");
    expect(new Set(lines.map((l) => l.protocol))).toEqual(new Set(["grpc", "connect", "grpc_web"]));
  });

  it("refuses callers without a credential, or with a wrong one, with UNAUTHENTICATED", async () => {
    const { sessionId } = await storeAsGateway("ben");
    const none = await as({}).getToken({ userId: "ben", sessionId }).catch((e: unknown) => e);
    expect((none as ConnectError).code).toBe(Code.Unauthenticated);
    expect(reasonOf(none)).toBe("UNAUTHENTICATED");
    expect(await codeOf(as({ bearer: "not-a-known-credential" }).getToken({ userId: "ben", sessionId }))).toBe(Code.Unauthenticated);
    // A certificate the service's CA did not sign identifies nobody, whatever its names.
    const rogue = await certs.rogue("chat-gateway.internal");
    expect(await codeOf(as({ cert: rogue.cert, key: rogue.key }).getToken({ userId: "ben", sessionId }))).toBe(Code.Unauthenticated);
    const grpcJs = grpcJsClient(svc.url, { ca: certs.ca, bearer: "wrong" });
    try {
      const err = (await grpcJs.call("GetToken", { user_id: "ben", session_id: sessionId }).catch((e: unknown) => e)) as GrpcJsError;
      expect(err.code).toBe(GrpcStatus.UNAUTHENTICATED);
    } finally {
      grpcJs.close();
    }
  });

  it("refuses a known caller outside its rpcs or providers with PERMISSION_DENIED", async () => {
    const { sessionId } = await storeAsGateway("cy");
    const chat = as({ cert: chatCert.cert, key: chatCert.key });
    expect(await codeOf(chat.storeSession({ userId: "cy", provider: "corp", tokens: { accessToken: "x" } }))).toBe(Code.PermissionDenied);
    expect(await codeOf(chat.revokeSession({ userId: "cy", sessionId }))).toBe(Code.PermissionDenied);
    expect(await codeOf(as({ bearer: SECRETS.authGateway }).getToken({ userId: "cy", sessionId }))).toBe(Code.PermissionDenied);
    // chat-gateway may only use provider corp.
    expect(await codeOf(chat.getToken({ userId: "cy", provider: "other" }))).toBe(Code.PermissionDenied);
    // A caller limited to "other" gets PERMISSION_DENIED for a corp session, by id or by user.
    const otherOnly = as({ bearer: SECRETS.otherScope });
    const byId = await otherOnly.getToken({ userId: "cy", sessionId }).catch((e: unknown) => e);
    expect((byId as ConnectError).code).toBe(Code.PermissionDenied);
    expect(reasonOf(byId)).toBe("PROVIDER_NOT_ALLOWED");
    expect(await codeOf(otherOnly.revokeSession({ userId: "cy", sessionId }))).toBe(Code.PermissionDenied);
    // ...and sees none of them in lists, nor revokes them all.
    expect((await otherOnly.listSessions({ userId: "cy" })).sessions).toHaveLength(0);
    expect((await otherOnly.revokeUserSessions({ userId: "cy" })).revoked).toBe(0);
    expect((await chat.getToken({ userId: "cy", sessionId })).sessionId).toBe(sessionId);
  });

  it("writes an audit line for each denial naming the caller, never the credential", () => {
    const denials = svc.logs.lines().filter((l) => l.audit === true && l.event === "denied");
    expect(denials.some((l) => l.caller === null && l.reason === "no_credential")).toBe(true);
    expect(denials.some((l) => l.caller === null && l.reason === "unknown_credential")).toBe(true);
    expect(denials.some((l) => l.caller === "chat-gateway" && l.reason === "rpc_not_allowed")).toBe(true);
    expect(denials.some((l) => l.caller === "other-only" && l.reason === "provider_not_allowed")).toBe(true);
    const text = svc.logs.text();
    for (const secret of [...Object.values(SECRETS), "not-a-known-credential"]) expect(text).not.toContain(secret);
    expect(text).not.toContain(sha256(SECRETS.ops));
  });

  it("lists a user's sessions as metadata only, and logs the user out everywhere", async () => {
    const gateway = as({ bearer: SECRETS.authGateway });
    const a = await storeAsGateway("dee");
    const b = await storeAsGateway("dee");
    const list = await gateway.listSessions({ userId: "dee" });
    expect(list.sessions.map((s) => s.sessionId).sort()).toEqual([a.sessionId, b.sessionId].sort());
    const first = list.sessions[0]!;
    expect(first.provider).toBe("corp");
    expect(first.status).toBe(SessionStatus.ACTIVE);
    expect(first.keyId).toBe("test-k1");
    expect(first.refreshable).toBe(true);
    expect(Number(first.accessExpiresAt!.seconds)).toBeGreaterThan(Date.now() / 1000);
    const json = JSON.stringify(list, (_k, v: unknown) => (typeof v === "bigint" ? v.toString() : v));
    for (const t of [a.tokens, b.tokens]) {
      for (const secret of [t.access_token, t.refresh_token, t.id_token]) expect(json).not.toContain(secret);
    }

    provider.resetStats();
    expect((await gateway.revokeUserSessions({ userId: "dee", provider: "corp" })).revoked).toBe(2);
    expect((await gateway.listSessions({ userId: "dee" })).sessions).toHaveLength(0);
    expect(provider.stats.revocations).toBeGreaterThanOrEqual(2);
    for (const t of [a.tokens, b.tokens]) expect((await provider.introspect(t.refresh_token)).active).toBe(false);
    const lines = svc.logs.lines().filter((l) => l.audit === true && l.event === "revoke_all");
    expect(lines.at(-1)).toMatchObject({ caller: "auth-gateway", userId: "dee", count: 2 });
  });

  it("writes audit lines for store, refresh, reauth and revoke with caller, user, provider and a session hash", async () => {
    const { tokens, sessionId } = await storeAsGateway("eve");
    const chat = as({ cert: chatCert.cert, key: chatCert.key });
    await chat.getToken({ userId: "eve", sessionId, forceRefresh: true });
    // Replaying the refresh token the service has since rotated makes the provider revoke the grant,
    // so the next refresh is rejected: the session turns REAUTH_REQUIRED.
    await provider.redeem(tokens.refresh_token);
    await chat.getToken({ userId: "eve", sessionId, forceRefresh: true }).catch(() => undefined);
    await as({ bearer: SECRETS.authGateway }).revokeSession({ userId: "eve", sessionId });
    const audit = svc.logs.lines().filter((l) => l.audit === true && l.userId === "eve");
    const sid = audit[0]!.sid;
    expect(sid).toMatch(/^[A-Za-z0-9_-]{12}$/);
    const expectLine = (event: string, extra: Record<string, unknown>) =>
      expect(audit.find((l) => l.event === event && Object.entries(extra).every(([k, v]) => l[k] === v))).toMatchObject({
        provider: "corp",
        sid,
      });
    expectLine("store", { caller: "auth-gateway" });
    expectLine("refresh", { caller: "chat-gateway", outcome: "success" });
    expectLine("reauth_required", { caller: "chat-gateway", reason: "invalid_grant" });
    expectLine("revoke", { caller: "auth-gateway" });
    expect(JSON.stringify(audit)).not.toContain(sessionId);
  });

  it("rate-limits a caller with RESOURCE_EXHAUSTED", async () => {
    const ops = as({ bearer: SECRETS.ops });
    const codes = [];
    for (let i = 0; i < 10; i++) codes.push(await codeOf(ops.listSessions({ userId: "nobody" })));
    expect(codes.slice(0, 5).every((c) => c === "ok")).toBe(true);
    expect(codes.filter((c) => c === Code.ResourceExhausted).length).toBeGreaterThanOrEqual(4);
  });

  it("answers health checks without credentials, but reflection only to a known caller", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: svc.url, nodeOptions: { ca: certs.ca } }));
    expect((await health.check({ service: "" })).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    const reflection = (bearer?: string) =>
      createClient(
        ServerReflection,
        createGrpcTransport({
          baseUrl: svc.url,
          nodeOptions: { ca: certs.ca },
          interceptors: bearer ? [(next) => (req) => (req.header.set("authorization", `Bearer ${bearer}`), next(req))] : [],
        }),
      );
    const list = async (bearer?: string) => {
      async function* one() {
        yield { messageRequest: { case: "listServices" as const, value: "" } };
      }
      const out = [];
      for await (const a of reflection(bearer).serverReflectionInfo(one())) out.push(a.messageResponse.case);
      return out;
    };
    await expect(list()).rejects.toThrow(/valid caller credential/);
    expect(await list(SECRETS.authGateway)).toEqual(["listServicesResponse"]);
  });
});

describe("TLS without a client CA", () => {
  it("serves both listeners over TLS to bearer callers, asking for no client certificate", async () => {
    const dir = mkdtempSync(join(tmpdir(), "token-service-tls-"));
    const [certs, provider] = await Promise.all([makeCertificates(dir), startTestProvider()]);
    const svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        tls: { cert_file: certs.serverCertFile, key_file: certs.serverKeyFile },
        callers: [{ name: "ops", token_sha256: sha256(SECRETS.ops), rpcs: ["*"] }],
      },
    });
    try {
      expect(svc.url.startsWith("https://")).toBe(true);
      const stored = await connectGrpcClient(svc.url, { ca: certs.ca, bearer: SECRETS.ops }).storeSession({
        userId: "tls-only",
        provider: "corp",
        tokens: { accessToken: "at-tls-only", expiresIn: 60n },
      });
      const viaHttp = await connectJsonClient(svc.httpUrl, { ca: certs.ca, bearer: SECRETS.ops, httpVersion: "2" }).getToken({
        userId: "tls-only",
        sessionId: stored.sessionId,
      });
      expect(viaHttp.token).toBe("at-tls-only");
      const grpcJs = grpcJsClient(svc.url, { ca: certs.ca, bearer: SECRETS.ops });
      try {
        expect((await grpcJs.call("GetToken", { user_id: "tls-only", session_id: stored.sessionId })).token).toBe("at-tls-only");
      } finally {
        grpcJs.close();
      }
    } finally {
      await svc.close();
      await provider.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
