import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import type { DescMethodUnary } from "@bufbuild/protobuf";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { exportJWK, generateKeyPair, SignJWT, type CryptoKey, type JWK } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { grpcJsRawClient, type CallOutcome } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const CREDENTIALS = {
  free: "free-credential-00112233445566",
  "by-session": "session-credential-66778899aabb",
  asserted: "assertion-credential-ccddeeff0011",
};
const ISSUER = "https://users.example.test";
const AUDIENCE = "token-service";
const PERMISSION_DENIED = 7;

type Method = keyof typeof TokenService.method;
type Call = (who: keyof typeof CREDENTIALS, method: Method, request: Record<string, unknown>, assertion?: string) => Promise<CallOutcome<Record<string, unknown>>>;

/**
 * callers[].user_binding on both listeners: `none` names any user,
 * `session_id` must name the session, `assertion` needs a JWT from the
 * configured issuer (JWKS served by a real HTTP server) whose `sub` is the
 * request's user_id, unexpired, for this audience.
 */
describe("user binding", () => {
  let provider: TestProvider;
  let svc: TestService;
  let jwksServer: Server;
  let key: CryptoKey;
  let strangerKey: CryptoKey;
  let jwksRequests = 0;
  const issued: string[] = [];

  async function assertion(sub: string, o: { aud?: string; iss?: string; exp?: number; key?: CryptoKey } = {}): Promise<string> {
    const jwt = await new SignJWT({ sub })
      .setProtectedHeader({ alg: "ES256", kid: "users-1" })
      .setIssuer(o.iss ?? ISSUER)
      .setAudience(o.aud ?? AUDIENCE)
      .setIssuedAt()
      .setExpirationTime(o.exp ?? Math.floor(Date.now() / 1000) + 300)
      .sign(o.key ?? key);
    issued.push(jwt);
    return jwt;
  }

  beforeAll(async () => {
    const pair = await generateKeyPair("ES256");
    key = pair.privateKey;
    strangerKey = (await generateKeyPair("ES256")).privateKey;
    const jwk: JWK = { ...(await exportJWK(pair.publicKey)), kid: "users-1", alg: "ES256", use: "sig" };
    jwksServer = createServer((_req, res) => {
      jwksRequests++;
      res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((r) => jwksServer.listen(0, "127.0.0.1", r));
    provider = await startTestProvider();
    const keys = generateKeySpec("binding");
    // Reload reads the same file and environment as start-up did (see the last test).
    const reread = () =>
      loadConfig({
        TOKEN_SERVICE_ADDR: "127.0.0.1:0",
        TOKEN_SERVICE_ADMIN_ADDR: "127.0.0.1:0",
        TOKEN_SERVICE_HTTP_ADDR: "127.0.0.1:0",
        DATABASE_URL: `sqlite:${svc.dir}/sessions.db`,
        TOKEN_SERVICE_CONFIG: `${svc.dir}/config.yaml`,
        TOKEN_SERVICE_LOG_LEVEL: "debug",
        TOKEN_SERVICE_ENCRYPTION_KEYS: keys,
      });
    svc = await startService({
      dialect: "sqlite",
      keys,
      overrides: { loadConfig: reread },
      yaml: {
        providers: [provider.configEntry("corp")],
        user_assertion: { issuer: ISSUER, jwks_uri: `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks`, audience: AUDIENCE },
        callers: [
          { name: "free", token_sha256: sha256(CREDENTIALS.free), rpcs: ["*"] },
          { name: "by-session", token_sha256: sha256(CREDENTIALS["by-session"]), rpcs: ["*"], user_binding: "session_id" },
          { name: "asserted", token_sha256: sha256(CREDENTIALS.asserted), rpcs: ["*"], user_binding: "assertion" },
        ],
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
    await new Promise((r) => jwksServer?.close(r));
  });

  const listeners: Array<[string, () => Call]> = [
    [
      "gRPC listener (grpc-js)",
      () => {
        const client = grpcJsRawClient(svc.url);
        return (who, method, request, jwt) =>
          client.call(TokenService, TokenService.method[method] as DescMethodUnary, request, {
            bearer: CREDENTIALS[who],
            metadata: jwt ? { "x-user-assertion": jwt } : {},
          }) as Promise<CallOutcome<Record<string, unknown>>>;
      },
    ],
    [
      "HTTP listener (Connect)",
      () => {
        const clients = Object.fromEntries(
          Object.entries(CREDENTIALS).map(([who, bearer]) => [
            who,
            createClient(
              TokenService,
              createConnectTransport({
                baseUrl: svc.httpUrl,
                httpVersion: "1.1",
                interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${bearer}`), next(req))],
              }),
            ),
          ]),
        );
        return async (who, method, request, jwt) => {
          const fn = clients[who]![method] as (req: unknown, o: unknown) => Promise<Record<string, unknown>>;
          try {
            return { code: 0, response: await fn(request, { headers: jwt ? { "x-user-assertion": jwt } : {} }) };
          } catch (err) {
            const e = err as ConnectError;
            return { code: e.code, reason: e.findDetails(ErrorInfoSchema)[0]?.reason };
          }
        };
      },
    ],
  ];

  async function tokensFor(user: string) {
    const t = await provider.login(user);
    return { accessToken: t.access_token, refreshToken: t.refresh_token, idToken: t.id_token, expiresIn: 300n };
  }
  const ok = (o: CallOutcome) => expect({ code: o.code, reason: o.reason }).toEqual({ code: 0, reason: undefined });
  const unbound = (o: CallOutcome) => expect(o).toMatchObject({ code: PERMISSION_DENIED, reason: "USER_NOT_BOUND" });

  describe.each(listeners)("%s", (_name, make) => {
    let call: Call;
    beforeAll(() => {
      call = make();
    });

    it("none: names any user, as without binding", async () => {
      const stored = await call("free", "storeSession", { userId: "nora", provider: "corp", tokens: await tokensFor("nora") });
      ok(stored);
      ok(await call("free", "getToken", { userId: "nora", provider: "corp" }));
      ok(await call("free", "listSessions", { userId: "nora" }));
      ok(await call("free", "revokeUserSessions", { userId: "nora" }));
    });

    it("session_id: only through a session id; no lookup by user, no listing, no revoking all", async () => {
      const stored = await call("by-session", "storeSession", { userId: "sid", provider: "corp", tokens: await tokensFor("sid") });
      ok(stored);
      const sessionId = stored.response!.sessionId as string;
      ok(await call("by-session", "getToken", { userId: "sid", sessionId }));
      unbound(await call("by-session", "getToken", { userId: "sid", provider: "corp" }));
      unbound(await call("by-session", "listSessions", { userId: "sid" }));
      unbound(await call("by-session", "revokeUserSessions", { userId: "sid", provider: "corp" }));
      ok(await call("by-session", "revokeSession", { userId: "sid", sessionId }));
      const started = await call("by-session", "startAuthorization", { userId: "sid", provider: "corp", redirectUri: provider.redirectUri });
      ok(started);
      const callbackUrl = await provider.authorize(started.response!.authorizationUrl as string, "sid");
      ok(await call("by-session", "completeAuthorization", { userId: "sid", callbackUrl }));
    });

    it("assertion: every RPC that names a user needs an assertion for that user_id", async () => {
      const user = `ada-${_name.startsWith("gRPC") ? "g" : "h"}`;
      const mine = await assertion(user);
      const theirs = await assertion("mallory");
      const each = async (method: Method, request: Record<string, unknown>) => {
        unbound(await call("asserted", method, request));
        unbound(await call("asserted", method, request, theirs));
        const outcome = await call("asserted", method, request, mine);
        ok(outcome);
        return outcome.response!;
      };
      const stored = await each("storeSession", { userId: user, provider: "corp", tokens: await tokensFor(user) });
      const sessionId = stored.sessionId as string;
      await each("getToken", { userId: user, sessionId });
      await each("getToken", { userId: user, provider: "corp" });
      expect(((await each("listSessions", { userId: user })).sessions as unknown[]).length).toBe(1);
      await each("revokeSession", { userId: user, sessionId });
      await each("storeSession", { userId: user, provider: "corp", tokens: await tokensFor(user) });
      await each("revokeUserSessions", { userId: user });
      const started = await each("startAuthorization", { userId: user, provider: "corp", redirectUri: provider.redirectUri });
      const callbackUrl = await provider.authorize(started.authorizationUrl as string, user);
      await each("completeAuthorization", { userId: user, callbackUrl });
    });

    it("assertion: refuses one expired, for another audience or issuer, for another user, or with a bad signature", async () => {
      const user = `bea-${_name.startsWith("gRPC") ? "g" : "h"}`;
      const stored = await call("asserted", "storeSession", { userId: user, provider: "corp", tokens: await tokensFor(user) }, await assertion(user));
      ok(stored);
      const request = { userId: user, sessionId: stored.response!.sessionId as string };
      unbound(await call("asserted", "getToken", request, await assertion(user, { exp: Math.floor(Date.now() / 1000) - 120 })));
      unbound(await call("asserted", "getToken", request, await assertion(user, { aud: "someone-else" })));
      unbound(await call("asserted", "getToken", request, await assertion(user, { iss: "https://elsewhere.example.test" })));
      unbound(await call("asserted", "getToken", request, await assertion("carl")));
      unbound(await call("asserted", "getToken", request, await assertion(user, { key: strangerKey })));
      unbound(await call("asserted", "getToken", request, "not-a-jwt"));
      ok(await call("asserted", "getToken", request, await assertion(user)));
    });
  });

  it("applies a changed user_binding on a reload", async () => {
    const file = `${svc.dir}/config.yaml`;
    const yaml = parse(readFileSync(file, "utf8")) as { callers: Array<Record<string, unknown>> };
    const call = listeners[0]![1]();
    ok(await call("free", "listSessions", { userId: "nora" }));
    yaml.callers[0]!.user_binding = "session_id";
    writeFileSync(file, stringify(yaml));
    expect(await svc.app.reload("test")).toMatchObject({ ok: true, changed: true });
    unbound(await call("free", "listSessions", { userId: "nora" }));
    delete yaml.callers[0]!.user_binding;
    writeFileSync(file, stringify(yaml));
    expect(await svc.app.reload("test")).toMatchObject({ ok: true, changed: true });
    ok(await call("free", "listSessions", { userId: "nora" }));
  });

  it("writes an audit line for each refusal, with why, and never the assertion or a caller credential", () => {
    const denied = svc.logs.lines().filter((l) => l.audit === true && l.event === "denied" && l.reason === "user_not_bound");
    const whys = new Set(denied.map((l) => l.why));
    for (const why of [
      "no_assertion",
      "assertion_for_another_user",
      "assertion_expired",
      "assertion_aud_invalid",
      "assertion_iss_invalid",
      "assertion_bad_signature",
      "assertion_invalid",
      "session_id_required",
    ]) {
      expect(whys, why).toContain(why);
    }
    expect(new Set(denied.map((l) => l.caller))).toEqual(new Set(["asserted", "by-session", "free"]));
    const text = svc.logs.text();
    for (const jwt of issued) {
      expect(text).not.toContain(jwt);
      expect(text).not.toContain(jwt.split(".")[2]!);
    }
    for (const secret of Object.values(CREDENTIALS)) {
      expect(text).not.toContain(secret);
      expect(text).not.toContain(sha256(secret));
    }
    // The JWK set was fetched once and cached, not once per call.
    expect(jwksRequests).toBeGreaterThanOrEqual(1);
    expect(jwksRequests).toBeLessThan(5);
  });
});
