import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, beforeEach, describe, expect, it } from "vitest";
import { ProviderRegistration, ProviderService, ProviderSource, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { AudienceTokenSchema, AuthorizationStateSchema } from "../../src/db/provider-entity.js";
import { SessionSchema } from "../../src/db/session-entity.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startProtectedResource, type TestProtectedResource } from "../helpers/protected-resource.js";
import { failure } from "../helpers/failure.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * The service as the OAuth client: the authorization code flow with PKCE
 * against a real oidc-provider (PKCE required, refresh-token rotation,
 * dynamic registration, resource indicators, back-channel logout), runtime
 * providers found from an issuer or a protected resource (RFC 9728).
 */

type Tokens = Client<typeof TokenService>;
type Providers = Client<typeof ProviderService>;

describe("the authorization code flow", () => {
  let provider: TestProvider;
  let svc: TestService;
  let tokens: Tokens;
  let providers: Providers;

  beforeAll(async () => {
    provider = await startTestProvider();
    // Every server here is on loopback over plain http: the operator allows both for runtime providers.
    svc = await startService({ dialect: "sqlite", provider, yaml: { outbound: { allow_private_networks: true, allow_insecure_http: true } } });
    const transport = createGrpcTransport({ baseUrl: svc.url });
    tokens = createClient(TokenService, transport);
    providers = createClient(ProviderService, transport);
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });
  beforeEach(() => provider.resetStats());

  /** StartAuthorization, the browser at the provider, CompleteAuthorization. */
  async function connect(user: string, providerId = "corp", extra: { resources?: string[]; redirectUri?: string } = {}) {
    const started = await tokens.startAuthorization({
      userId: user,
      provider: providerId,
      redirectUri: extra.redirectUri ?? provider.redirectUri,
      resources: extra.resources ?? [],
    });
    const callbackUrl = await provider.authorize(started.authorizationUrl, user);
    const done = await tokens.completeAuthorization({ userId: user, callbackUrl });
    return { started, callbackUrl, done };
  }

  it("connects a user end to end: PKCE, state and nonce, then GetToken and a refresh", async () => {
    const started = await tokens.startAuthorization({ userId: "alice", provider: "corp", redirectUri: provider.redirectUri });
    const url = new URL(started.authorizationUrl);
    expect(url.origin).toBe(provider.issuer);
    expect(url.searchParams.get("code_challenge_method")).toBe("S256");
    expect(url.searchParams.get("code_challenge")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(url.searchParams.get("state")).toBe(started.state);
    expect(url.searchParams.get("nonce")).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(url.searchParams.get("scope")).toBe("openid offline_access");
    expect(Number(started.expiresAt!.seconds) * 1000).toBeGreaterThan(Date.now() + 590_000);

    const callbackUrl = await provider.authorize(started.authorizationUrl, "alice");
    expect(new URL(callbackUrl).searchParams.get("iss")).toBe(provider.issuer);
    const done = await tokens.completeAuthorization({ userId: "alice", callbackUrl });
    expect(done).toMatchObject({ provider: "corp" });
    expect(done.sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);

    const first = await tokens.getToken({ userId: "alice", sessionId: done.sessionId });
    expect(first.token).not.toBe("");
    // The code exchange was one token request; from here on, count refreshes only.
    expect(provider.stats.refreshes).toBe(1);
    provider.resetStats();
    const refreshed = await tokens.getToken({ userId: "alice", sessionId: done.sessionId, forceRefresh: true });
    expect(refreshed.token).not.toBe(first.token);
    expect(provider.stats.refreshes).toBe(1);
    expect(provider.stats.invalidGrants).toBe(0);
    // The ID token's sub is recorded, for back-channel logout.
    const row = await svc.app.orm.em.fork().findOne(SessionSchema, { id: done.sessionId });
    expect(row?.subject).toBe("alice");
  });

  it("refuses a replayed, expired, foreign or misdirected state with INVALID_STATE, leaving a foreign or misdirected one to its owner", async () => {
    const { callbackUrl } = await connect("bob");
    // Replayed: the state was used by the completion above.
    expect(await failure(tokens.completeAuthorization({ userId: "bob", callbackUrl }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "INVALID_STATE",
    });
    // Issued for another user: refused, and still usable by its owner.
    const forCarol = await tokens.startAuthorization({ userId: "carol", provider: "corp", redirectUri: provider.redirectUri });
    const carolsCallback = await provider.authorize(forCarol.authorizationUrl, "carol");
    expect((await failure(tokens.completeAuthorization({ userId: "mallory", callbackUrl: carolsCallback }))).reason).toBe("INVALID_STATE");
    const carols = await tokens.completeAuthorization({ userId: "carol", callbackUrl: carolsCallback });
    expect((await tokens.getToken({ userId: "carol", sessionId: carols.sessionId })).token).not.toBe("");
    // Another redirect URI than the one it was issued for: refused, and the right one still works.
    const forDan = await tokens.startAuthorization({ userId: "dan", provider: "corp", redirectUri: provider.redirectUri });
    const dansCallback = new URL(await provider.authorize(forDan.authorizationUrl, "dan"));
    const misdirected = new URL(dansCallback);
    misdirected.pathname = "/elsewhere";
    expect((await failure(tokens.completeAuthorization({ userId: "dan", callbackUrl: misdirected.href }))).reason).toBe("INVALID_STATE");
    expect((await tokens.completeAuthorization({ userId: "dan", callbackUrl: dansCallback.href })).provider).toBe("corp");
    // Expired: its lifetime ran out (moved into the past here rather than waited for).
    const forEve = await tokens.startAuthorization({ userId: "eve", provider: "corp", redirectUri: provider.redirectUri });
    const evesCallback = await provider.authorize(forEve.authorizationUrl, "eve");
    await svc.app.orm.em.fork().nativeUpdate(AuthorizationStateSchema, { userId: "eve" }, { expiresAt: new Date(Date.now() - 1000) });
    expect((await failure(tokens.completeAuthorization({ userId: "eve", callbackUrl: evesCallback }))).reason).toBe("INVALID_STATE");
    // Unknown and missing states.
    const unknown = new URL(evesCallback);
    unknown.searchParams.set("state", "not-a-state-we-issued");
    expect((await failure(tokens.completeAuthorization({ userId: "eve", callbackUrl: unknown.href }))).reason).toBe("INVALID_STATE");
    unknown.searchParams.delete("state");
    expect((await failure(tokens.completeAuthorization({ userId: "eve", callbackUrl: unknown.href }))).reason).toBe("INVALID_STATE");
    expect((await failure(tokens.completeAuthorization({ userId: "eve", callbackUrl: "not a url" }))).code).toBe(Code.InvalidArgument);
    // The log says which check refused each one.
    const whys = svc.logs.lines().filter((l) => l.event === "authorization_state_refused").map((l) => l.why);
    expect(whys).toEqual(["used", "other_user", "other_redirect_uri", "expired", "unknown", "missing"]);
  });

  it("answers AUTHORIZATION_DENIED with the RFC 6749 code when the user refuses", async () => {
    const started = await tokens.startAuthorization({ userId: "frank", provider: "corp", redirectUri: provider.redirectUri });
    const callbackUrl = await provider.authorize(started.authorizationUrl, "frank", { deny: true });
    expect(new URL(callbackUrl).searchParams.get("error")).toBe("access_denied");
    expect(await failure(tokens.completeAuthorization({ userId: "frank", callbackUrl }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "AUTHORIZATION_DENIED",
      metadata: { error: "access_denied" },
    });
  });

  it("answers CODE_REJECTED when the provider refuses the code, and INVALID_CALLBACK for a wrong issuer", async () => {
    const started = await tokens.startAuthorization({ userId: "gina", provider: "corp", redirectUri: provider.redirectUri });
    const callback = new URL(await provider.authorize(started.authorizationUrl, "gina"));
    callback.searchParams.set("code", "a-code-the-provider-never-issued");
    expect(await failure(tokens.completeAuthorization({ userId: "gina", callbackUrl: callback.href }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "CODE_REJECTED",
      metadata: { error: "invalid_grant" },
    });
    const again = await tokens.startAuthorization({ userId: "gina", provider: "corp", redirectUri: provider.redirectUri });
    const mixedUp = new URL(await provider.authorize(again.authorizationUrl, "gina"));
    mixedUp.searchParams.set("iss", "https://another-issuer.example");
    expect((await failure(tokens.completeAuthorization({ userId: "gina", callbackUrl: mixedUp.href }))).reason).toBe("INVALID_CALLBACK");
  });

  it("refuses bad StartAuthorization input, naming the field", async () => {
    const base = { userId: "hank", provider: "corp", redirectUri: provider.redirectUri };
    const cases: Array<[Parameters<Tokens["startAuthorization"]>[0], string]> = [
      [{ ...base, userId: "" }, "user_id"],
      [{ ...base, provider: "nope" }, "provider"],
      [{ ...base, redirectUri: "not a url" }, "redirect_uri"],
      [{ ...base, redirectUri: "http://gateway.example.test/cb" }, "redirect_uri"],
      [{ ...base, extraParams: { state: "mine" } }, "extra_params"],
      [{ ...base, extraParams: { code_challenge: "x" } }, "extra_params"],
      [{ ...base, resources: ["not-absolute"] }, "resources"],
      [{ ...base, scopes: ["bad scope"] }, "scopes"],
    ];
    for (const [req, field] of cases) {
      expect(await failure(tokens.startAuthorization(req)), field).toMatchObject({ code: Code.InvalidArgument, metadata: { field } });
    }
    // Provider quirks pass through.
    const started = await tokens.startAuthorization({ ...base, extraParams: { prompt: "consent", access_type: "offline" } });
    expect(new URL(started.authorizationUrl).searchParams.get("prompt")).toBe("consent");
  });

  it("registers a provider from its issuer with a public client, which always uses PKCE and refreshes", async () => {
    const registered = await providers.registerProvider({
      id: "public-idp",
      issuer: provider.issuer,
      clientId: provider.publicClientId,
      clientAuthMethod: "none",
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
    });
    expect(registered.provider).toMatchObject({
      id: "public-idp",
      issuer: provider.issuer,
      clientId: provider.publicClientId,
      clientAuthMethod: "none",
      source: ProviderSource.RUNTIME,
      registration: ProviderRegistration.STATIC,
      openid: true,
    });
    expect(registered.provider!.endpoints?.tokenEndpoint).toBe(`${provider.issuer}/token`);
    const { done } = await connect("ivy", "public-idp");
    const first = await tokens.getToken({ userId: "ivy", sessionId: done.sessionId });
    const refreshed = await tokens.getToken({ userId: "ivy", sessionId: done.sessionId, forceRefresh: true });
    expect(refreshed.token).not.toBe(first.token);
    const listed = await providers.listProviders({});
    expect(listed.providers.map((p) => [p.id, p.source])).toEqual([
      ["corp", ProviderSource.CONFIG],
      ["public-idp", ProviderSource.RUNTIME],
    ]);
  });

  it("registers a client dynamically (RFC 7591) and connects through it", async () => {
    const registered = await providers.registerProvider({
      id: "dynamic-idp",
      issuer: provider.issuer,
      dynamicRegistration: true,
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
      publicUrl: svc.httpUrl,
    });
    expect(registered.provider).toMatchObject({ registration: ProviderRegistration.DYNAMIC, clientAuthMethod: "client_secret_basic" });
    expect(registered.provider!.clientId).not.toBe(provider.clientId);
    expect(registered.provider!.endpoints?.registrationEndpoint).toBe(`${provider.issuer}/reg`);
    const { done } = await connect("jack", "dynamic-idp");
    expect((await tokens.getToken({ userId: "jack", sessionId: done.sessionId, forceRefresh: true })).token).not.toBe("");
  });

  it("finds a provider from a protected resource (RFC 9728), by its well-known metadata or its 401 challenge, and keeps the resource", async () => {
    const resources: TestProtectedResource[] = [];
    try {
      for (const [id, challengeOnly] of [
        ["mcp-well-known", false],
        ["mcp-challenge", true],
      ] as const) {
        const resource = await startProtectedResource(provider.issuer, { challengeOnly });
        resources.push(resource);
        const registered = await providers.registerProvider({
          id,
          resourceUrl: resource.url,
          clientId: provider.clientId,
          clientSecret: provider.clientSecret,
          redirectUris: [provider.redirectUri],
          allowInsecureHttp: true,
        });
        expect(registered.provider).toMatchObject({ issuer: provider.issuer, resourceUrl: resource.url, defaultResource: resource.url });
        expect(resource.seen).toContain(challengeOnly ? "/meta/resource.json" : "/.well-known/oauth-protected-resource/mcp");
        const { started, done } = await connect(`kim-${id}`, id);
        // The resource travels on the authorization request, and the session's token is for that audience.
        expect(new URL(started.authorizationUrl).searchParams.getAll("resource")).toEqual([resource.url]);
        const got = await tokens.getToken({ userId: `kim-${id}`, sessionId: done.sessionId });
        expect(decodeJwt(got.token).aud).toBe(resource.url);
        // A refresh sends the session's one resource again (RFC 8707), so the new token is for it too.
        const refreshed = await tokens.getToken({ userId: `kim-${id}`, sessionId: done.sessionId, forceRefresh: true });
        expect(refreshed.token).not.toBe(got.token);
        expect(decodeJwt(refreshed.token).aud).toBe(resource.url);
        const row = await svc.app.orm.em.fork().findOne(SessionSchema, { id: done.sessionId });
        expect(JSON.parse(row!.resources!)).toEqual([resource.url]);
      }
    } finally {
      for (const r of resources) await r.close();
    }
  });

  it("refuses a duplicate id, a YAML provider's deletion, and a deletion that would orphan sessions", async () => {
    const again = { id: "corp", issuer: provider.issuer, clientId: "x", clientSecret: "y", allowInsecureHttp: true };
    expect(await failure(providers.registerProvider(again))).toMatchObject({ code: Code.AlreadyExists, reason: "PROVIDER_EXISTS" });
    expect(await failure(providers.registerProvider({ ...again, id: "public-idp" }))).toMatchObject({ code: Code.AlreadyExists });
    expect(await failure(providers.registerProvider({ ...again, id: "both", resourceUrl: "https://mcp.example/mcp" }))).toMatchObject({
      code: Code.InvalidArgument,
    });
    expect(await failure(providers.registerProvider({ ...again, id: "plain", issuer: "http://idp.example.com", allowInsecureHttp: true }))).toMatchObject({
      code: Code.InvalidArgument,
      metadata: { field: "issuer" },
    });
    expect(await failure(providers.deleteProvider({ id: "corp" }))).toMatchObject({ code: Code.FailedPrecondition, reason: "PROVIDER_READ_ONLY" });
    expect(await failure(providers.deleteProvider({ id: "no-such" }))).toMatchObject({ code: Code.NotFound, reason: "PROVIDER_NOT_FOUND" });

    await providers.registerProvider({ ...again, id: "doomed", clientId: provider.clientId, clientSecret: provider.clientSecret, redirectUris: [provider.redirectUri] });
    const { done } = await connect("liam", "doomed");
    const token = (await tokens.getToken({ userId: "liam", sessionId: done.sessionId })).token;
    expect(await failure(providers.deleteProvider({ id: "doomed" }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "PROVIDER_HAS_SESSIONS",
      metadata: { provider: "doomed", sessions: "1" },
    });
    expect(await providers.deleteProvider({ id: "doomed", revokeSessions: true })).toMatchObject({ sessionsRevoked: 1 });
    expect((await provider.introspect(token)).active).toBe(false);
    expect((await failure(tokens.getToken({ userId: "liam", sessionId: done.sessionId }))).code).toBe(Code.NotFound);
    expect((await providers.listProviders({})).providers.map((p) => p.id)).not.toContain("doomed");
  });

  it("sweeps started authorizations past their lifetime", async () => {
    await tokens.startAuthorization({ userId: "sam", provider: "corp", redirectUri: provider.redirectUri });
    const em = svc.app.orm.em.fork();
    expect(await em.count(AuthorizationStateSchema, { userId: "sam" })).toBe(1);
    await svc.app.sweeper.sweep(new Date(Date.now() + 5 * 60_000));
    expect(await em.count(AuthorizationStateSchema, { userId: "sam" })).toBe(1);
    const swept = await svc.app.sweeper.sweep(new Date(Date.now() + 11 * 60_000));
    expect(swept.authorizationStates).toBeGreaterThanOrEqual(1);
    expect(await em.count(AuthorizationStateSchema, { userId: "sam" })).toBe(0);
  });

  it("records the ID token's sub for StoreSession too, so a back-channel logout ends it", async () => {
    const login = await provider.login("tara");
    const stored = await tokens.storeSession({
      userId: "tara",
      provider: "corp",
      tokens: { accessToken: login.access_token, refreshToken: login.refresh_token, idToken: login.id_token, expiresIn: 300n },
    });
    expect((await svc.app.orm.em.fork().findOne(SessionSchema, { id: stored.sessionId }))?.subject).toBe("tara");
    const res = await fetch(`${svc.httpUrl}/oidc/backchannel-logout/corp`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: await provider.logoutToken(provider.clientId, { sub: "tara" }) }),
    });
    expect(res.status).toBe(200);
    expect((await failure(tokens.getToken({ userId: "tara", sessionId: stored.sessionId }))).code).toBe(Code.NotFound);
  });

  it("keeps the client secret, tokens, codes and states out of logs, error details and the raw database", async () => {
    const { started, callbackUrl, done } = await connect("rosa");
    const token = (await tokens.getToken({ userId: "rosa", sessionId: done.sessionId })).token;
    const err = await failure(tokens.completeAuthorization({ userId: "rosa", callbackUrl }));
    const secrets = [provider.clientSecret, token, started.state, new URL(callbackUrl).searchParams.get("code")!, done.sessionId];
    // The database file and its write-ahead log; the session id (a key, stored in clear) shows the search works.
    const db = Buffer.concat(["sessions.db", "sessions.db-wal"].filter((f) => existsSync(join(svc.dir, f))).map((f) => readFileSync(join(svc.dir, f))));
    for (const s of secrets) {
      expect(svc.logs.text()).not.toContain(s);
      expect(JSON.stringify(err)).not.toContain(s);
      expect(db.includes(Buffer.from(s))).toBe(s === done.sessionId);
    }
  });

  describe("back-channel logout", () => {
    const post = (path: string, form: Record<string, string>, headers: Record<string, string> = {}) =>
      fetch(`${svc.httpUrl}${path}`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", ...headers },
        body: new URLSearchParams(form),
      });
    const alive = async (user: string, sessionId: string) =>
      tokens.getToken({ userId: user, sessionId }).then(
        () => true,
        (e: unknown) => (e instanceof ConnectError && e.code === Code.NotFound ? false : Promise.reject(e)),
      );

    it("ends every session of a `sub`, and refuses forged, replayed and malformed tokens without changing anything", async () => {
      const tool = "https://tool.example.test/mcp";
      const nina = [(await connect("nina", "corp", { resources: [tool] })).done.sessionId, (await connect("nina")).done.sessionId];
      // An audience token held for the first login goes with it.
      expect(decodeJwt((await tokens.getToken({ userId: "nina", sessionId: nina[0]!, resource: tool })).token).aud).toBe(tool);
      const audienceRows = () => svc.app.orm.em.fork().count(AudienceTokenSchema, { sessionId: nina[0]! });
      expect(await audienceRows()).toBe(1);
      const oscar = (await connect("oscar")).done.sessionId;
      const path = "/oidc/backchannel-logout/corp";
      const bad = async (token: string, reason: RegExp) => {
        const res = await post(path, { logout_token: token });
        expect(res.status).toBe(400);
        expect(((await res.json()) as { error_description: string }).error_description).toMatch(reason);
      };
      await bad(await provider.logoutToken(provider.clientId, { sub: "oscar" }, { forged: true }), /signature/);
      await bad(await provider.logoutToken("someone-else", { sub: "oscar" }), /claim/);
      await bad(await provider.logoutToken(provider.clientId, { sub: "oscar", nonce: "n-1" }), /nonce_present/);
      await bad(await provider.logoutToken(provider.clientId, { sub: "oscar", events: { "urn:other": {} } }), /missing_logout_event/);
      await bad(await provider.logoutToken(provider.clientId, {}), /neither_sub_nor_sid/);
      await bad("not.a.jwt", /.+/);
      expect((await post(path, {})).status).toBe(400);
      expect((await post(path, { logout_token: "x" }, { "content-type": "application/json" })).status).toBe(400);
      expect((await post("/oidc/backchannel-logout/no-such-provider", { logout_token: "x" })).status).toBe(400);
      expect(await alive("oscar", oscar)).toBe(true);
      expect(await alive("nina", nina[0]!)).toBe(true);

      const token = await provider.logoutToken(provider.clientId, { sub: "nina" });
      const ok = await post(path, { logout_token: token });
      expect(ok.status).toBe(200);
      expect(ok.headers.get("cache-control")).toBe("no-store");
      expect(await alive("nina", nina[0]!)).toBe(false);
      expect(await alive("nina", nina[1]!)).toBe(false);
      expect(await audienceRows()).toBe(0);
      expect(await alive("oscar", oscar)).toBe(true);
      // The same token again is a replay.
      await bad(token, /replayed_jti/);
      const audit = svc.logs.lines().filter((l) => l.event === "backchannel_logout" && l.userId === "nina");
      expect(audit).toHaveLength(2);
      for (const l of audit) expect(l).toMatchObject({ audit: true, provider: "corp", userId: "nina", matched: "sub" });
    });

    it("ends only the login with the token's `sid`, sent by oidc-provider itself to a dynamically registered client", async () => {
      const registered = await providers.registerProvider({
        id: "logout-idp",
        issuer: provider.issuer,
        dynamicRegistration: true,
        redirectUris: [provider.redirectUri],
        allowInsecureHttp: true,
        publicUrl: svc.httpUrl,
      });
      const clientId = registered.provider!.clientId;
      const first = (await connect("paul", "logout-idp")).done.sessionId;
      const second = (await connect("paul", "logout-idp")).done.sessionId;
      const em = svc.app.orm.em.fork();
      const sids = await Promise.all([first, second].map(async (id) => (await em.findOne(SessionSchema, { id }))!.sid));
      expect(sids[0]).toBeTruthy();
      expect(sids[1]).toBeTruthy();
      expect(sids[0]).not.toBe(sids[1]);
      await provider.backchannelLogout(clientId, "paul", sids[0]!);
      expect(await alive("paul", first)).toBe(false);
      expect(await alive("paul", second)).toBe(true);
      expect(svc.logs.lines().find((l) => l.event === "backchannel_logout" && l.provider === "logout-idp")).toMatchObject({ matched: "sid" });
    });
  });
});
