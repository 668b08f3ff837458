import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { AudienceTokenSchema } from "../../src/db/provider-entity.js";
import { managedEntry, startEnterpriseIdp, startMcpAuthorizationServer, JWT_BEARER, type EnterpriseIdp, type McpAuthorizationServer } from "../helpers/id-jag.js";
import { whoami } from "../helpers/mcp-client.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { TOKEN_EXCHANGE } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/**
 * 200 concurrent GetToken callers for one user at an enterprise-managed
 * provider, spread over three replicas on one PostgreSQL, half over grpc-js
 * and half over Connect: one ID-JAG exchange at the IdP and one JWT bearer
 * grant at the authorization server, counted there, and one token for all.
 * Then the token comes due, and the next storm again costs one of each.
 */
describe("enterprise-managed authorization over three replicas (PostgreSQL)", () => {
  let idp: EnterpriseIdp;
  let as: McpAuthorizationServer;
  let mcp: TestMcpServer;
  const replicas: TestService[] = [];

  beforeAll(async () => {
    idp = await startEnterpriseIdp({ clientIdAt: () => "mcp-client" });
    as = await startMcpAuthorizationServer(idp.issuer);
    mcp = await startMcpServer(as.issuer, "CRM");
    const databaseUrl = await createTestDatabase(inject("postgresUrl"));
    const keys = generateKeySpec("idjag");
    const providers = [idp.configEntry("corp"), managedEntry(as, mcp.url)];
    for (const id of ["r1", "r2", "r3"]) {
      replicas.push(await startService({ dialect: "postgresql", databaseUrl, keys, yaml: { providers }, overrides: { replicaId: id } }));
    }
  });
  afterAll(async () => {
    await Promise.all(replicas.map((r) => r.close()));
    await mcp?.close();
    await as?.close();
    await idp?.close();
  });

  async function storm(): Promise<string[]> {
    return Promise.all(
      Array.from({ length: 200 }, async (_, i) => {
        const r = replicas[i % 3]!;
        if (i % 2 === 0) return (await r.client.getToken({ userId: "ivy", provider: "crm" })).token;
        return String((await r.grpcJs.call("GetToken", { user_id: "ivy", provider: "crm" })).token);
      }),
    );
  }

  it("makes exactly one exchange and one assertion grant per storm, and all 200 callers get the same token", async () => {
    const set = await idp.login("ivy");
    await replicas[0]!.client.storeSession({
      userId: "ivy",
      provider: "corp",
      tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
    });
    let previous = "";
    for (const round of [1, 2]) {
      idp.resetStats();
      as.resetStats();
      const tokens = await storm();
      expect(new Set(tokens).size, `round ${round}`).toBe(1);
      expect(tokens[0]).not.toBe(previous);
      previous = tokens[0]!;
      expect(idp.stats.tokenRequests.map((r) => r.grantType), `round ${round}`).toEqual([TOKEN_EXCHANGE]);
      expect(as.stats.tokenRequests.map((r) => r.grantType), `round ${round}`).toEqual([JWT_BEARER]);
      expect(await whoami(mcp.url, previous)).toEqual({ server: "CRM", sub: "ivy", aud: mcp.url });
      if (round === 1) {
        // Due for round 2 by its stored expiry (inside the 60 s margin), and the replicas' caches dropped.
        const due = { issuedAt: new Date(Date.now() - 3600_000), expiresAt: new Date(Date.now() + 30_000) };
        expect(await replicas[0]!.app.orm.em.fork().nativeUpdate(AudienceTokenSchema, {}, due)).toBe(1);
        for (const r of replicas) r.app.cache.flush();
      }
    }
    for (const r of replicas) {
      const answered = r.logs.lines().filter((l) => l.msg === "rpc" && l.rpc === "tokenservice.v1.TokenService/GetToken" && l.code === "ok");
      expect(answered.length).toBeGreaterThan(0);
      expect(r.logs.text()).not.toContain(previous);
      expect(r.logs.text()).not.toContain(set.id_token);
    }
  });
});
