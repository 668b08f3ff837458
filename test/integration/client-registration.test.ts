import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { importJWK, SignJWT, type JWK } from "jose";
import { Agent, fetch as undiciFetch } from "undici";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ProviderRegistration, ProviderRegistrationMode, ProviderService, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { SecretVault } from "../../src/authorization/secret-vault.js";
import { keysCommand } from "../../src/cli/keys.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { SigningKeyRepository } from "../../src/db/signing-key-repository.js";
import { makeCertificates, type TestCertificates } from "../helpers/certs.js";
import { grpcJsClient, type GrpcJsTokenClient } from "../helpers/clients.js";
import { failure } from "../helpers/failure.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { freePort } from "../helpers/postgres.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/**
 * How the service gets its client at an authorization server (MCP
 * authorization spec, client registration): pre-registered, then its client
 * ID metadata document (CIMD, fetched by a real oidc-provider from the
 * service's HTTPS listener), then dynamic registration; registering again on
 * invalid_client; the PKCE guard.
 */

const REDIRECT = "https://gateway.example.test/oauth/callback";
const DOCUMENT_PATH = "/oauth/client-metadata.json";

interface Running {
  svc: TestService;
  publicUrl: string;
  tokens: Client<typeof TokenService>;
  providers: Client<typeof ProviderService>;
  grpcJs: GrpcJsTokenClient;
}

describe("client registration: CIMD, the order, registering again, the PKCE guard", () => {
  let dir: string;
  let certs: TestCertificates;
  let agent: Agent;
  /** How the authorization servers reach the service: its HTTPS listener, trusting the test CA. */
  let trusting: (url: string, init: RequestInit) => Promise<Response>;
  const documentFetches: string[] = [];
  let asAll: TestProvider;
  let asDcr: TestProvider;
  let asCimd: TestProvider;
  let asNone: TestProvider;
  let asNoPkce: TestProvider;
  let asUnreachable: TestProvider;
  let asMismatch: TestProvider;
  let main: Running;
  let other: Running;
  const started: Running[] = [];

  async function start(options: { authMethod?: "none" | "private_key_jwt"; provider?: TestProvider; host?: string } = {}): Promise<Running> {
    const port = await freePort();
    const publicUrl = `https://${options.host ?? "127.0.0.1"}:${port}`;
    const svc = await startService({
      dialect: "sqlite",
      provider: options.provider,
      yaml: {
        tls: { cert_file: certs.serverCertFile, key_file: certs.serverKeyFile },
        public_url: publicUrl,
        client_metadata: { redirect_uris: [REDIRECT], token_endpoint_auth_method: options.authMethod ?? "none" },
        outbound: { allow_private_networks: true, allow_insecure_http: true },
      },
      env: { TOKEN_SERVICE_HTTP_ADDR: `127.0.0.1:${port}` },
    });
    const transport = createGrpcTransport({ baseUrl: svc.url, nodeOptions: { ca: certs.ca } });
    const running = {
      svc,
      publicUrl,
      tokens: createClient(TokenService, transport),
      providers: createClient(ProviderService, transport),
      grpcJs: grpcJsClient(svc.url, { ca: certs.ca }),
    };
    started.push(running);
    return running;
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "client-registration-"));
    certs = await makeCertificates(dir);
    agent = new Agent({ connect: { ca: certs.ca } });
    trusting = async (url, init) => {
      if (url.endsWith(DOCUMENT_PATH)) documentFetches.push(url);
      return undiciFetch(url, { ...(init as object), dispatcher: agent }) as unknown as Response;
    };
    asAll = await startTestProvider({ clientIdMetadataDocument: { fetch: (u, i) => trusting(u, i) }, stableClientIds: true });
    asDcr = await startTestProvider();
    asCimd = await startTestProvider({ registration: false, clientIdMetadataDocument: { fetch: (u, i) => trusting(u, i) } });
    asNone = await startTestProvider({ registration: false });
    asNoPkce = await startTestProvider({ advertisePkce: false });
    // The document's URL does not answer from where this server is (a closed port stands in for it).
    const closed = await freePort();
    asUnreachable = await startTestProvider({
      registration: false,
      clientIdMetadataDocument: { fetch: (u, i) => trusting(u.replace(main.publicUrl, `https://127.0.0.1:${closed}`), i) },
    });
    // The document's URL answers with another service's document (a proxy routing to the wrong place).
    asMismatch = await startTestProvider({
      registration: false,
      clientIdMetadataDocument: { fetch: (u, i) => trusting(u.replace(main.publicUrl, other.publicUrl), i) },
    });
    // A YAML provider whose metadata lacks S256 is the operator's word: not refused.
    main = await start({ provider: asNoPkce });
    other = await start({ host: "localhost" });
  });
  afterAll(async () => {
    for (const r of started) {
      r.grpcJs.close();
      await r.svc.close();
    }
    for (const p of [asAll, asDcr, asCimd, asNone, asNoPkce, asUnreachable, asMismatch]) await p?.close();
    await agent?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** StartAuthorization, the browser at the server, CompleteAuthorization. */
  async function connect(r: Running, as: TestProvider, provider: string, user: string) {
    const begun = await r.tokens.startAuthorization({ userId: user, provider, redirectUri: REDIRECT });
    const callbackUrl = await as.authorize(begun.authorizationUrl, user);
    const done = await r.tokens.completeAuthorization({ userId: user, callbackUrl });
    return { begun, done };
  }

  /** The authorization URL opened in a browser that cannot get past the server: its status and page. */
  async function refusedAtServer(url: string): Promise<{ status: number; page: string }> {
    const res = await fetch(url, { redirect: "manual" });
    return { status: res.status, page: await res.text() };
  }

  function register(r: Running, as: TestProvider, id: string, extra: Record<string, unknown> = {}) {
    return r.providers.registerProvider({ id, issuer: as.issuer, allowInsecureHttp: true, registration: ProviderRegistrationMode.AUTO, ...extra });
  }

  it("serves the client metadata document at {public_url}/oauth/client-metadata.json, with cache headers", async () => {
    const url = `${main.publicUrl}${DOCUMENT_PATH}`;
    const res = await trusting(url, {});
    expect(res.status).toBe(200);
    expect(res.headers.get("cache-control")).toMatch(/max-age=\d+/);
    const etag = res.headers.get("etag");
    expect(etag).toMatch(/^".+"$/);
    expect(await res.json()).toEqual({
      client_id: url,
      client_name: "token-service",
      redirect_uris: [REDIRECT],
      grant_types: ["authorization_code", "refresh_token"],
      response_types: ["code"],
      token_endpoint_auth_method: "none",
    });
    const again = await trusting(url, { headers: { "if-none-match": etag! } });
    expect(again.status).toBe(304);
    // No JWK set without private_key_jwt.
    expect((await trusting(`${main.publicUrl}/oauth/jwks.json`, {})).status).toBe(404);
  });

  it("refuses to start with a document larger than 5 KiB, naming client_metadata", async () => {
    const many = Array.from({ length: 200 }, (_, i) => `${REDIRECT}/${i}`);
    await expect(
      startService({ dialect: "sqlite", yaml: { public_url: "https://tokens.example.com", client_metadata: { redirect_uris: many } } }),
    ).rejects.toThrow(/client_metadata: the client metadata document would be \d+ bytes, more than the 5120/);
  });

  it("the order at a server offering all three: a given client first, else CIMD", async () => {
    const given = await register(main, asAll, "all-given", { clientId: asAll.clientId, clientSecret: asAll.clientSecret, redirectUris: [REDIRECT] });
    expect(given.provider?.registration).toBe(ProviderRegistration.STATIC);
    const cimd = await register(main, asAll, "all-cimd");
    expect(cimd.provider).toMatchObject({ registration: ProviderRegistration.CIMD, clientId: `${main.publicUrl}${DOCUMENT_PATH}`, clientAuthMethod: "none" });
    const listed = await main.providers.listProviders({});
    expect(listed.providers.find((p) => p.id === "all-cimd")?.registration).toBe(ProviderRegistration.CIMD);
  });

  it("CIMD end to end: the server fetches the document, the code flow runs with that client_id, and the session refreshes", async () => {
    const fetchesBefore = documentFetches.length;
    const { begun, done } = await connect(main, asAll, "all-cimd", "carol");
    expect(new URL(begun.authorizationUrl).searchParams.get("client_id")).toBe(`${main.publicUrl}${DOCUMENT_PATH}`);
    expect(documentFetches.length).toBeGreaterThan(fetchesBefore);
    const first = await main.grpcJs.call("GetToken", { user_id: "carol", session_id: done.sessionId });
    asAll.resetStats();
    const refreshed = await main.grpcJs.call("GetToken", { user_id: "carol", session_id: done.sessionId, force_refresh: true });
    expect(refreshed.token).not.toBe(first.token);
    expect(asAll.stats.tokenRequests.map((t) => t.grantType)).toEqual(["refresh_token"]);
  });

  it("the order at a server offering only dynamic registration: DYNAMIC, with application_type", async () => {
    const registered = await register(main, asDcr, "dcr-only", { redirectUris: [REDIRECT] });
    expect(registered.provider?.registration).toBe(ProviderRegistration.DYNAMIC);
    expect(await asDcr.clientMetadata(registered.provider!.clientId)).toMatchObject({ application_type: "web", redirect_uris: [REDIRECT] });
  });

  it("the order at a server offering only CIMD: CIMD, and the flow works", async () => {
    const registered = await register(main, asCimd, "cimd-only");
    expect(registered.provider?.registration).toBe(ProviderRegistration.CIMD);
    const { done } = await connect(main, asCimd, "cimd-only", "dave");
    expect(done.provider).toBe("cimd-only");
  });

  it("the order at a server offering neither: FAILED_PRECONDITION NO_REGISTRATION_OPTION, saying what it offers", async () => {
    const refused = await failure(register(main, asNone, "none-offered", { redirectUris: [REDIRECT] }));
    expect(refused).toMatchObject({ code: Code.FailedPrecondition, reason: "NO_REGISTRATION_OPTION" });
    expect(refused.message).toMatch(/neither client ID metadata documents .* nor dynamic registration/);
    // A resource's server found without any mode asked is AUTO too; an explicit CIMD says why it cannot be.
    expect(await failure(register(main, asDcr, "dcr-cimd", { registration: ProviderRegistrationMode.CIMD }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "CIMD_NOT_SUPPORTED",
    });
  });

  it("a document the server cannot reach, or whose client_id is not its URL, ends the flow at the server", async () => {
    await register(main, asUnreachable, "unreachable");
    await register(main, asMismatch, "mismatch");
    const fetchedBefore = documentFetches.length;
    for (const id of ["unreachable", "mismatch"]) {
      const begun = await main.tokens.startAuthorization({ userId: "erin", provider: id, redirectUri: REDIRECT });
      const { status, page } = await refusedAtServer(begun.authorizationUrl);
      expect(status, id).toBe(400);
      expect(page, id).toMatch(/invalid_client/);
    }
    // The mismatching server did fetch a document: the other service's, whose client_id is not the URL it asked for.
    expect(documentFetches.slice(fetchedBefore)).toContain(`${other.publicUrl}${DOCUMENT_PATH}`);
  });

  it("registers again once when the server forgot the client (invalid_client), and the session refreshes; a second invalid_client is terminal", async () => {
    const registered = await main.providers.registerProvider({
      id: "forgetful",
      issuer: asAll.issuer,
      allowInsecureHttp: true,
      dynamicRegistration: true,
      redirectUris: [REDIRECT],
    });
    expect(registered.provider?.registration).toBe(ProviderRegistration.DYNAMIC);
    const clientId = registered.provider!.clientId;
    const { done } = await connect(main, asAll, "forgetful", "frank");
    await asAll.forgetClient(clientId);
    expect(await asAll.clientMetadata(clientId)).toBeUndefined();
    const refreshed = await main.grpcJs.call("GetToken", { user_id: "frank", session_id: done.sessionId, force_refresh: true });
    expect(refreshed.token).toBeTruthy();
    const secret = (await asAll.clientMetadata(clientId))?.client_secret;
    expect(typeof secret).toBe("string");
    const lines = main.svc.logs.lines().filter((l) => l.event === "client_reregistered" && l.provider === "forgetful");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatchObject({ audit: true, reason: "invalid_client", clientId });
    expect(main.svc.logs.text()).not.toContain(String(secret));

    // invalid_client again right after registering again: the session ends, as before.
    const invalidClient = { kind: "status" as const, status: 401, body: '{"error":"invalid_client"}', headers: { "content-type": "application/json" } };
    asAll.faults.push(invalidClient, invalidClient);
    expect(await failure(main.tokens.getToken({ userId: "frank", sessionId: done.sessionId, forceRefresh: true }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "REAUTH_REQUIRED",
    });
    expect(asAll.faults).toHaveLength(0);
  });

  it("the PKCE guard: refuses a runtime server that does not list S256, unless assume_pkce; a YAML one is not refused", async () => {
    const asked = { clientId: asNoPkce.clientId, clientSecret: asNoPkce.clientSecret, redirectUris: [REDIRECT], registration: ProviderRegistrationMode.STATIC };
    expect(await failure(register(main, asNoPkce, "no-pkce", asked))).toMatchObject({ code: Code.FailedPrecondition, reason: "PKCE_NOT_SUPPORTED" });
    const forced = await register(main, asNoPkce, "no-pkce", { ...asked, assumePkce: true });
    expect(forced.provider?.id).toBe("no-pkce");
    expect(main.svc.logs.lines().some((l) => l.event === "pkce_assumed" && l.provider === "no-pkce" && l.audit === true)).toBe(true);
    for (const id of ["no-pkce", "corp"]) {
      const { done } = await connect(main, asNoPkce, id, `grace-${id}`);
      expect(done.provider).toBe(id);
    }
  });

  describe("private_key_jwt", () => {
    let pk: Running;
    let as: TestProvider;
    const env = () => ({
      DATABASE_URL: `sqlite:${join(pk.svc.dir, "sessions.db")}`,
      TOKEN_SERVICE_ENCRYPTION_KEYS: pk.svc.keys!,
      TOKEN_SERVICE_CONFIG: join(pk.svc.dir, "config.yaml"),
    });
    const rotate = async () => {
      const out: string[] = [];
      const sink = new Writable({ write: (c: Buffer, _e, cb) => (out.push(c.toString()), cb()) });
      expect(await keysCommand(["rotate"], env(), sink)).toBe(0);
      await pk.svc.app.authorization.signingKeys!.load();
      return out.join("");
    };
    const published = async () => ((await (await trusting(`${pk.publicUrl}/oauth/jwks.json`, {})).json()) as { keys: JWK[] }).keys.map((k) => k.kid);
    /** A client assertion signed with a stored key (opened with the service's key ring), at the server's token endpoint. */
    const assertWith = async (kid: string) => {
      const row = (await new SigningKeyRepository(pk.svc.app.orm).list()).find((r) => r.kid === kid)!;
      const jwk = JSON.parse(new SecretVault(pk.svc.app.keyRing).open("signing_key", kid, "private_jwk", row.keyId, row.privateCt)) as JWK;
      const clientId = `${pk.publicUrl}${DOCUMENT_PATH}`;
      const assertion = await new SignJWT({ jti: crypto.randomUUID() })
        .setProtectedHeader({ alg: "ES256", kid })
        .setIssuer(clientId)
        .setSubject(clientId)
        .setAudience(as.issuer)
        .setIssuedAt()
        .setExpirationTime("1m")
        .sign(await importJWK(jwk, "ES256"));
      // A made-up refresh token: invalid_grant means the client authenticated, invalid_client that it did not.
      const res = await fetch(`${as.issuer}/token`, {
        method: "POST",
        headers: { "content-type": "application/x-www-form-urlencoded", "x-test-setup": "1" },
        body: new URLSearchParams({
          grant_type: "refresh_token",
          refresh_token: "made-up",
          client_id: clientId,
          client_assertion_type: "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
          client_assertion: assertion,
        }),
      });
      return ((await res.json()) as { error: string }).error;
    };

    beforeAll(async () => {
      as = await startTestProvider({ registration: false, clientIdMetadataDocument: { fetch: (u, i) => trusting(u, i) } });
      pk = await start({ authMethod: "private_key_jwt" });
    });
    afterAll(async () => {
      await as?.close();
    });

    it("signs client assertions with the sealed key, and through a rotation both keys verify; new assertions use the new kid", async () => {
      const doc = (await (await trusting(`${pk.publicUrl}${DOCUMENT_PATH}`, {})).json()) as Record<string, unknown>;
      expect(doc).toMatchObject({ token_endpoint_auth_method: "private_key_jwt", jwks_uri: `${pk.publicUrl}/oauth/jwks.json` });
      const [k1] = await published();
      expect(k1).toBeTruthy();
      // The private key is in the database only sealed.
      const row = (await new SigningKeyRepository(pk.svc.app.orm).list())[0]!;
      expect(row.privateCt.toString("latin1")).not.toContain('"d"');

      const registered = await register(pk, as, "pkjwt");
      expect(registered.provider).toMatchObject({ registration: ProviderRegistration.CIMD, clientAuthMethod: "private_key_jwt" });
      const { done } = await connect(pk, as, "pkjwt", "heidi");
      expect(as.stats.assertionKids.at(-1)).toBe(k1);

      expect(await rotate()).toMatch(/client signing keys: .* signs from now on; 0 older key\(s\) retired/);
      const [k2, stillK1] = await published();
      expect(stillK1).toBe(k1);
      expect(k2).not.toBe(k1);
      await pk.grpcJs.call("GetToken", { user_id: "heidi", session_id: done.sessionId, force_refresh: true });
      expect(as.stats.assertionKids.at(-1)).toBe(k2);
      expect(await assertWith(k1!)).toBe("invalid_grant");
      expect(await assertWith(k2!)).toBe("invalid_grant");

      // The next rotation retires k1: it no longer verifies.
      expect(await rotate()).toMatch(/1 older key\(s\) retired/);
      expect(await published()).not.toContain(k1);
      expect(await assertWith(k2!)).toBe("invalid_grant");
      await pk.grpcJs.call("GetToken", { user_id: "heidi", session_id: done.sessionId, force_refresh: true });
      expect(as.stats.assertionKids.at(-1)).not.toBe(k2);
    });
  });
});

describe("registering again over two replicas (PostgreSQL): the provider row's version coordinates", () => {
  let as: TestProvider;
  let a: TestService;
  let b: TestService;

  beforeAll(async () => {
    as = await startTestProvider({ stableClientIds: true });
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("rereg");
    const yaml = { outbound: { allow_private_networks: true, allow_insecure_http: true } };
    a = await startService({ dialect: "postgresql", databaseUrl, keys, yaml, overrides: { replicaId: "replica-a" } });
    b = await startService({ dialect: "postgresql", databaseUrl, keys, yaml, overrides: { replicaId: "replica-b" } });
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await as?.close();
  });

  it("both replicas answered invalid_client at once: one registration at the server, one audit line, and both sessions refresh", async () => {
    const providersOnA = createClient(ProviderService, createGrpcTransport({ baseUrl: a.url }));
    const registered = await providersOnA.registerProvider({ id: "shared", issuer: as.issuer, allowInsecureHttp: true, dynamicRegistration: true, redirectUris: [REDIRECT] });
    await b.app.authorization.admin.reload();
    const sessions: Record<string, string> = {};
    for (const user of ["ivan", "judy"]) {
      const begun = await a.client.startAuthorization({ userId: user, provider: "shared", redirectUri: REDIRECT });
      const done = await a.client.completeAuthorization({ userId: user, callbackUrl: await as.authorize(begun.authorizationUrl, user) });
      sessions[user] = done.sessionId;
    }
    await as.forgetClient(registered.provider!.clientId);
    as.resetStats();
    const [onA, onB] = await Promise.all([
      a.grpcJs.call("GetToken", { user_id: "ivan", session_id: sessions.ivan, force_refresh: true }),
      b.client.getToken({ userId: "judy", sessionId: sessions.judy, forceRefresh: true }),
    ]);
    expect(onA.token).toBeTruthy();
    expect(onB.token).toBeTruthy();
    expect(as.stats.registrations).toBe(1);
    const audit = [a, b].flatMap((r) => r.logs.lines().filter((l) => l.event === "client_reregistered"));
    expect(audit).toHaveLength(1);
  });
});
