import { lookup, type LookupAddress } from "node:dns";
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ProviderService, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { failure } from "../helpers/failure.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startFakeIssuer, startInternalStandIn, type FakeIssuer, type InternalStandIn } from "../helpers/outbound-servers.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * The outbound policy (docs/security.md#outbound-policy): a runtime provider,
 * and everything its metadata names, reaches no loopback or private address
 * unless the operator allowed it; the internal stand-in server counts every
 * connection and must see none. YAML providers are exempt.
 */

type Clients = { tokens: Client<typeof TokenService>; providers: Client<typeof ProviderService> };

function clients(svc: TestService): Clients {
  const transport = createGrpcTransport({ baseUrl: svc.url });
  return { tokens: createClient(TokenService, transport), providers: createClient(ProviderService, transport) };
}

const refusedLines = (svc: TestService) => svc.logs.lines().filter((l) => l.msg === "outbound request refused by the outbound policy");

describe("without an outbound block", () => {
  let provider: TestProvider;
  let internal: InternalStandIn;
  let svc: TestService;
  let c: Clients;

  beforeAll(async () => {
    provider = await startTestProvider();
    internal = await startInternalStandIn();
    svc = await startService({ dialect: "sqlite", provider });
    c = clients(svc);
  });
  afterAll(async () => {
    await svc?.close();
    await internal?.close();
    await provider?.close();
  });

  it("refuses a runtime provider on loopback in every spelling, before any connection, naming the host and the rule", async () => {
    const p = internal.port;
    const spellings = [
      `https://localhost:${p}`,
      `https://127.1:${p}`,
      `https://2130706433:${p}`,
      `https://0x7f000001:${p}`,
      `https://[::ffff:127.0.0.1]:${p}`,
      `https://127.0.0.1:${p}`,
      "https://169.254.169.254",
      "https://10.1.2.3",
      "https://100.64.0.1",
      "https://[fd00::1]",
    ];
    for (const [i, issuer] of spellings.entries()) {
      const host = new URL(issuer).hostname;
      for (const field of ["issuer", "resourceUrl"] as const) {
        const err = await failure(c.providers.registerProvider({ id: `ssrf-${i}-${field}`, [field]: issuer, clientId: "c", clientSecret: "s" }));
        expect(err, issuer).toMatchObject({ code: Code.InvalidArgument, reason: "DESTINATION_NOT_ALLOWED", metadata: { host, rule: "private_address" } });
        // The resolved address is not what the caller learns.
        if (host === "localhost") expect(JSON.stringify(err)).not.toContain("127.0.0.1");
      }
    }
    expect(internal.connections).toBe(0);
    const lines = refusedLines(svc);
    expect(lines.length).toBeGreaterThanOrEqual(spellings.length * 2);
    expect(lines[0]).toMatchObject({ level: "warn", provider: "ssrf-0-issuer", url: `https://localhost:${p}/`, rule: "private_address" });
  });

  it("refuses the request field allow_insecure_http unless the operator set outbound.allow_insecure_http", async () => {
    // A name that resolves nowhere passes the address rules, so the field itself is what is refused.
    const err = await failure(
      c.providers.registerProvider({ id: "plain", issuer: "http://idp.example.invalid", clientId: "c", clientSecret: "s", allowInsecureHttp: true }),
    );
    expect(err).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "allow_insecure_http" } });
    expect(err.message).toMatch(/operator must allow/);
    expect(provider.stats.refreshes).toBe(0);
  });

  it("answers a loopback or IPv4-compatible provider over plain http as a refused destination, whatever the request says", async () => {
    const p = internal.port;
    const cases = [
      { issuer: `http://127.0.0.1:${p}`, allowInsecureHttp: true, host: "127.0.0.1" },
      { issuer: `http://127.0.0.1:${p}`, allowInsecureHttp: false, host: "127.0.0.1" },
      { issuer: `http://localhost:${p}`, allowInsecureHttp: true, host: "localhost" },
      { issuer: `https://[::127.0.0.1]:${p}`, allowInsecureHttp: false, host: "[::7f00:1]" },
    ];
    for (const [i, k] of cases.entries()) {
      const err = await failure(c.providers.registerProvider({ id: `plain-${i}`, issuer: k.issuer, clientId: "c", clientSecret: "s", allowInsecureHttp: k.allowInsecureHttp }));
      expect(err, k.issuer).toMatchObject({ code: Code.InvalidArgument, reason: "DESTINATION_NOT_ALLOWED", metadata: { host: k.host, rule: "private_address" } });
    }
    expect(internal.connections).toBe(0);
  });

  it("keeps YAML providers on loopback working: the operator's own", async () => {
    const login = await provider.login("yaml-user");
    const stored = await c.tokens.storeSession({
      userId: "yaml-user",
      provider: "corp",
      tokens: { accessToken: login.access_token, refreshToken: login.refresh_token, expiresIn: 300n },
    });
    const refreshed = await c.tokens.getToken({ userId: "yaml-user", sessionId: stored.sessionId, forceRefresh: true });
    expect(refreshed.token).not.toBe(login.access_token);
    expect(refusedLines(svc).filter((l) => l.provider === "corp")).toEqual([]);
  });
});

describe("with outbound.allow_hosts naming the identity provider only", () => {
  let provider: TestProvider;
  let internal: InternalStandIn;
  const fakes: FakeIssuer[] = [];
  let svc: TestService;
  let c: Clients;
  let resourceHost: FakeIssuer;
  let internalEndpoints: FakeIssuer;
  let internalRegistration: FakeIssuer;
  let failing: FakeIssuer;
  let hanging: http.Server;
  let closedPort: number;

  beforeAll(async () => {
    failing = await startFakeIssuer(() => ({}), { discoveryStatus: 500 });
    hanging = http.createServer(() => undefined).listen(0, "127.0.0.1");
    await once(hanging, "listening");
    const closed = http.createServer().listen(0, "127.0.0.1");
    await once(closed, "listening");
    closedPort = (closed.address() as AddressInfo).port;
    await new Promise((r) => closed.close(r));
    provider = await startTestProvider();
    internal = await startInternalStandIn();
    resourceHost = await startFakeIssuer(() => ({}), { resourceMetadata: `${internal.url}/meta.json` });
    internalEndpoints = await startFakeIssuer(() => ({
      token_endpoint: `${internal.url}/token`,
      revocation_endpoint: `${internal.url}/revoke`,
      jwks_uri: `${internal.url}/jwks`,
    }));
    internalRegistration = await startFakeIssuer(() => ({ registration_endpoint: `http://localhost:${internal.port}/reg` }));
    fakes.push(resourceHost, internalEndpoints, internalRegistration, failing);
    const allowHosts = [
      new URL(provider.issuer).host,
      ...fakes.map((f) => new URL(f.url).host),
      `127.0.0.1:${(hanging.address() as AddressInfo).port}`,
      `127.0.0.1:${closedPort}`,
    ];
    svc = await startService({
      dialect: "sqlite",
      yaml: { outbound: { allow_hosts: allowHosts, allow_insecure_http: true }, refresh: { provider_timeout_seconds: 2 } },
    });
    c = clients(svc);
  });
  afterAll(async () => {
    await svc?.close();
    for (const f of fakes) await f.close();
    hanging?.closeAllConnections();
    hanging?.close();
    await internal?.close();
    await provider?.close();
  });

  it("answers one PROVIDER_SETUP_FAILED for a refused connection, an HTTP error and a timeout alike; the log has the detail", async () => {
    const issuers = [`http://127.0.0.1:${closedPort}`, failing.url, `http://127.0.0.1:${(hanging.address() as AddressInfo).port}`];
    const seen = [];
    for (const [i, issuer] of issuers.entries()) {
      const err = await failure(c.providers.registerProvider({ id: `down-${i}`, issuer, clientId: "c", clientSecret: "s", allowInsecureHttp: true }));
      seen.push({ code: err.code, reason: err.reason, metadata: err.metadata, message: err.message });
    }
    expect(seen[0]).toMatchObject({ code: Code.FailedPrecondition, reason: "PROVIDER_SETUP_FAILED", metadata: { reason: "discovery_failed" } });
    expect(seen[1]).toEqual(seen[0]);
    expect(seen[2]).toEqual(seen[0]);
    const logged = svc.logs.lines().filter((l) => l.msg === "provider setup failed").map((l) => [l.provider, l.code]);
    expect(logged).toEqual([
      ["down-0", "network"],
      ["down-1", "http_500"],
      ["down-2", "timeout"],
    ]);
  });

  it("lets a loopback IdP named in allow_hosts through, for the whole code flow and refreshes", async () => {
    await c.providers.registerProvider({
      id: "allowed",
      issuer: provider.issuer,
      clientId: provider.clientId,
      clientSecret: provider.clientSecret,
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
    });
    const started = await c.tokens.startAuthorization({ userId: "amy", provider: "allowed", redirectUri: provider.redirectUri });
    const done = await c.tokens.completeAuthorization({ userId: "amy", callbackUrl: await provider.authorize(started.authorizationUrl, "amy") });
    const first = await c.tokens.getToken({ userId: "amy", sessionId: done.sessionId });
    const again = await c.tokens.getToken({ userId: "amy", sessionId: done.sessionId, forceRefresh: true });
    expect(again.token).not.toBe(first.token);
  });

  it("refuses a 401 challenge whose resource_metadata points at an internal host", async () => {
    const err = await failure(c.providers.registerProvider({ id: "challenge", resourceUrl: `${resourceHost.url}/mcp`, clientId: "c", clientSecret: "s", allowInsecureHttp: true }));
    expect(err).toMatchObject({ code: Code.InvalidArgument, reason: "DESTINATION_NOT_ALLOWED", metadata: { host: "127.0.0.1", rule: "private_address" } });
    expect(resourceHost.seen).toContain("/mcp");
  });

  it("refuses metadata whose registration endpoint points at an internal host", async () => {
    const err = await failure(
      c.providers.registerProvider({ id: "reg", issuer: internalRegistration.url, dynamicRegistration: true, redirectUris: ["http://127.0.0.1:1/cb"], allowInsecureHttp: true }),
    );
    expect(err).toMatchObject({ code: Code.InvalidArgument, reason: "DESTINATION_NOT_ALLOWED", metadata: { host: "localhost", rule: "private_address" } });
  });

  it("refuses token, revocation and JWKS endpoints pointing at an internal host, after registration too", async () => {
    await c.providers.registerProvider({ id: "inner", issuer: internalEndpoints.url, clientId: "c", clientSecret: "s", allowInsecureHttp: true });
    const stored = await c.tokens.storeSession({ userId: "ben", provider: "inner", tokens: { accessToken: "a-token", refreshToken: "r-token", expiresIn: 300n } });
    const err = await failure(c.tokens.getToken({ userId: "ben", sessionId: stored.sessionId, forceRefresh: true }));
    expect(err).toMatchObject({ code: Code.FailedPrecondition, reason: "DESTINATION_NOT_ALLOWED", metadata: { provider: "inner", host: "127.0.0.1", rule: "private_address" } });
    // The session is kept: the grant is not at fault.
    expect((await c.tokens.getToken({ userId: "ben", sessionId: stored.sessionId })).token).toBe("a-token");
    const logout = await fetch(`${svc.httpUrl}/oidc/backchannel-logout/inner`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: "eyJhbGciOiJSUzI1NiIsImtpZCI6IngifQ.eyJzdWIiOiJiZW4ifQ.c2ln" }),
    });
    expect(logout.status).toBe(503);
    await c.tokens.revokeSession({ userId: "ben", sessionId: stored.sessionId });
    expect(refusedLines(svc).filter((l) => l.provider === "inner").map((l) => l.url)).toEqual(
      expect.arrayContaining([`${internal.url}/token`, `${internal.url}/jwks`, `${internal.url}/revoke`]),
    );
  });

  it("opened no connection to the internal host in all of this", () => {
    expect(internal.connections).toBe(0);
    expect(internal.requests).toEqual([]);
  });
});

describe("names are checked in the connection's own lookup", () => {
  let internal: InternalStandIn;
  let idp: FakeIssuer;
  let svc: TestService;
  let c: Clients;
  const asked: string[] = [];
  /** The injected resolver: `localhost` answers 127.0.0.2 (where only the fake IdP listens); `mixed.test` a public and a loopback address. */
  const resolve = (name: string): Promise<LookupAddress[]> => {
    asked.push(name);
    if (name === "localhost") return Promise.resolve([{ address: "127.0.0.2", family: 4 }]);
    if (name === "mixed.test") return Promise.resolve([{ address: "93.184.215.14", family: 4 }, { address: "127.0.0.1", family: 4 }]);
    return new Promise((ok, fail) => lookup(name, { all: true }, (err, a) => (err ? fail(err) : ok(a))));
  };

  beforeAll(async () => {
    internal = await startInternalStandIn();
    idp = await startFakeIssuer(() => ({}), { host: "127.0.0.2" });
    svc = await startService({
      dialect: "sqlite",
      yaml: { outbound: { allow_hosts: [`localhost:${idp.port}`], allow_insecure_http: true } },
      overrides: { resolve },
    });
    c = clients(svc);
  });
  afterAll(async () => {
    await svc?.close();
    await idp?.close();
    await internal?.close();
  });

  it("connects to the address the lookup hook answered (an allowed name)", async () => {
    // Only the injected answer (127.0.0.2) reaches the fake IdP: the system's localhost (127.0.0.1 or ::1) has nothing on that port.
    const view = await c.providers.registerProvider({ id: "pinned", issuer: `http://localhost:${idp.port}`, clientId: "c", clientSecret: "s", allowInsecureHttp: true });
    expect(view.provider?.issuer).toBe(`http://localhost:${idp.port}`);
    expect(idp.seen.length).toBeGreaterThan(0);
  });

  it("judges a name by every address of the one lookup its connection uses, so DNS rebinding has no second answer to use", async () => {
    asked.length = 0;
    const err = await failure(c.providers.registerProvider({ id: "rebind", issuer: `http://localhost:${internal.port}`, clientId: "c", clientSecret: "s", allowInsecureHttp: true }));
    expect(err).toMatchObject({ code: Code.InvalidArgument, reason: "DESTINATION_NOT_ALLOWED", metadata: { host: "localhost", rule: "private_address" } });
    // One lookup per connection attempt (RFC 8414 first): no separate check whose answer could differ from the connection's.
    expect(asked).toEqual(["localhost"]);
    const mixed = await failure(c.providers.registerProvider({ id: "mixed", issuer: "https://mixed.test", clientId: "c", clientSecret: "s" }));
    expect(mixed).toMatchObject({ reason: "DESTINATION_NOT_ALLOWED", metadata: { host: "mixed.test" } });
    expect(internal.connections).toBe(0);
  });
});
