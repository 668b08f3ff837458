import { Client as PgClient } from "pg";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { ProviderService, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/**
 * Runtime providers across replicas on one PostgreSQL: a provider registered
 * on one replica serves the whole code flow on another within a second, and
 * its secrets (and every token of the flow) are ciphertext in the database.
 */
/** The test IdP is on loopback over plain http: the operator allows both for runtime providers. */
const OUTBOUND = { outbound: { allow_private_networks: true, allow_insecure_http: true } };

describe("runtime providers over two replicas (PostgreSQL)", () => {
  let provider: TestProvider;
  let a: TestService;
  let b: TestService;
  let databaseUrl: string;

  beforeAll(async () => {
    provider = await startTestProvider();
    databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("replicas");
    // Started one after the other: the second finds the migrations applied.
    a = await startService({ dialect: "postgresql", databaseUrl, keys, provider, yaml: OUTBOUND, overrides: { replicaId: "replica-a" } });
    b = await startService({ dialect: "postgresql", databaseUrl, keys, provider, yaml: OUTBOUND, overrides: { replicaId: "replica-b" } });
  });
  afterAll(async () => {
    await Promise.all([a?.close(), b?.close()]);
    await provider?.close();
  });

  it("serves StartAuthorization and CompleteAuthorization on one replica within a second of RegisterProvider on the other", async () => {
    const onA = createClient(ProviderService, createGrpcTransport({ baseUrl: a.url }));
    const providersOnB = createClient(ProviderService, createGrpcTransport({ baseUrl: b.url }));
    const tokensOnB = createClient(TokenService, createGrpcTransport({ baseUrl: b.url }));
    const secret = provider.clientSecret;
    await onA.registerProvider({
      id: "late-idp",
      issuer: provider.issuer,
      clientId: provider.clientId,
      clientSecret: secret,
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
    });
    const registeredAt = Date.now();
    let seenAfter = Infinity;
    while (Date.now() - registeredAt < 5000) {
      const ids = (await providersOnB.listProviders({})).providers.map((p) => p.id);
      if (ids.includes("late-idp")) {
        seenAfter = Date.now() - registeredAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(seenAfter).toBeLessThan(1000);
    const started = await tokensOnB.startAuthorization({ userId: "quinn", provider: "late-idp", redirectUri: provider.redirectUri });
    const callbackUrl = await provider.authorize(started.authorizationUrl, "quinn");
    const done = await tokensOnB.completeAuthorization({ userId: "quinn", callbackUrl });
    const token = (await tokensOnB.getToken({ userId: "quinn", sessionId: done.sessionId })).token;
    // And the other replica refreshes it (same provider, loaded from the database).
    const tokensOnA = createClient(TokenService, createGrpcTransport({ baseUrl: a.url }));
    expect((await tokensOnA.getToken({ userId: "quinn", sessionId: done.sessionId, forceRefresh: true })).token).not.toBe(token);

    // Deleted on B: gone from A too, within a second.
    await providersOnB.deleteProvider({ id: "late-idp", revokeSessions: true });
    const deletedAt = Date.now();
    let goneAfter = Infinity;
    while (Date.now() - deletedAt < 5000) {
      if (!(await onA.listProviders({})).providers.some((p) => p.id === "late-idp")) {
        goneAfter = Date.now() - deletedAt;
        break;
      }
      await new Promise((r) => setTimeout(r, 20));
    }
    expect(goneAfter).toBeLessThan(1000);

    // Nothing secret in the database in clear: the client secret, the tokens, the state and its verifier.
    const pg = new PgClient({ connectionString: databaseUrl });
    await pg.connect();
    try {
      const dump = (
        await pg.query(
          "select string_agg(t::text, E'\\n') as text from (select p::text as t from providers p union all select s::text from sessions s union all select a::text from authorization_states a) x",
        )
      ).rows[0].text as string | null;
      expect(dump ?? "").not.toContain(secret);
      expect(dump ?? "").not.toContain(token);
      expect(dump ?? "").not.toContain(started.state);
    } finally {
      await pg.end();
    }
    for (const svc of [a, b]) {
      const text = svc.logs.text();
      for (const s of [secret, token, started.state, new URL(callbackUrl).searchParams.get("code")!]) expect(text).not.toContain(s);
    }
  });
});
