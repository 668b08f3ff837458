import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ProviderKind, ProviderService, ProviderSource } from "../../gen/tokenservice/v1/token_service_pb.js";
import { failure } from "../helpers/failure.js";
import { startEnterpriseIdp, startMcpAuthorizationServer, JWT_BEARER, type EnterpriseIdp, type McpAuthorizationServer } from "../helpers/id-jag.js";
import { whoami } from "../helpers/mcp-client.js";
import { startMcpServer, type TestMcpServer } from "../helpers/mcp-server.js";
import { TOKEN_EXCHANGE } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";

/** Enterprise-managed providers registered at run time (RegisterProvider), through the outbound policy like any runtime provider. */
describe("RegisterProvider with kind ENTERPRISE_MANAGED", () => {
  let idp: EnterpriseIdp;
  let as: McpAuthorizationServer;
  let legacy: McpAuthorizationServer;
  let mcp: TestMcpServer;
  let svc: TestService;
  let providers: Client<typeof ProviderService>;

  beforeAll(async () => {
    idp = await startEnterpriseIdp({ clientIdAt: () => "mcp-client" });
    [as, legacy] = await Promise.all([startMcpAuthorizationServer(idp.issuer), startMcpAuthorizationServer(idp.issuer, { advertise: false })]);
    mcp = await startMcpServer(as.issuer, "CRM");
    svc = await startService({ dialect: "sqlite", provider: idp, yaml: { outbound: { allow_private_networks: true, allow_insecure_http: true } } });
    providers = createClient(ProviderService, createGrpcTransport({ baseUrl: svc.url }));
  });
  afterAll(async () => {
    await svc?.close();
    await mcp?.close();
    await Promise.all([as?.close(), legacy?.close()]);
    await idp?.close();
  });

  const base = { kind: ProviderKind.ENTERPRISE_MANAGED, enterpriseIdp: "corp", allowInsecureHttp: true };

  it("registers one from the MCP server's URL (RFC 9728), lists it, and GetToken gets a token through it", async () => {
    const registered = await providers.registerProvider({ ...base, id: "crm", resourceUrl: mcp.url, clientId: as.clientId, clientSecret: as.clientSecret });
    expect(registered.provider).toMatchObject({ id: "crm", issuer: as.issuer, kind: ProviderKind.ENTERPRISE_MANAGED, enterpriseIdp: "corp", defaultResource: mcp.url, source: ProviderSource.RUNTIME });
    const listed = (await providers.listProviders({})).providers.map((p) => [p.id, p.kind]);
    expect(listed).toEqual([
      ["corp", ProviderKind.OAUTH],
      ["crm", ProviderKind.ENTERPRISE_MANAGED],
    ]);
    const set = await idp.login("hana");
    await svc.client.storeSession({ userId: "hana", provider: "corp", tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: 300n } });
    idp.resetStats();
    as.resetStats();
    const answer = await svc.client.getToken({ userId: "hana", provider: "crm" });
    expect(await whoami(mcp.url, answer.token)).toEqual({ server: "CRM", sub: "hana", aud: mcp.url });
    expect(idp.stats.tokenRequests.map((r) => r.grantType)).toEqual([TOKEN_EXCHANGE]);
    expect(as.stats.tokenRequests.map((r) => r.grantType)).toEqual([JWT_BEARER]);
  });

  it("refuses an authorization server that does not advertise the ID-JAG profile, and names what else is wrong", async () => {
    const legacyReq = { ...base, id: "legacy", issuer: legacy.issuer, resource: "https://legacy.example.test/mcp", clientId: legacy.clientId, clientSecret: legacy.clientSecret };
    expect(await failure(providers.registerProvider(legacyReq))).toMatchObject({ code: Code.FailedPrecondition, reason: "ID_JAG_NOT_SUPPORTED", metadata: { provider: "legacy" } });
    const ok = { ...base, id: "crm2", issuer: as.issuer, resource: mcp.url, clientId: as.clientId, clientSecret: as.clientSecret };
    for (const [req, field] of [
      [{ ...ok, enterpriseIdp: "" }, "enterprise_idp"],
      [{ ...ok, enterpriseIdp: "nobody" }, "enterprise_idp"],
      [{ ...ok, enterpriseIdp: "crm" }, "enterprise_idp"],
      [{ ...ok, resource: "" }, "resource"],
      [{ ...ok, resource: "https://x.example.test/#frag" }, "resource"],
      [{ ...ok, clientId: "", clientSecret: "", dynamicRegistration: true, redirectUris: ["https://gw.example.test/cb"] }, "dynamic_registration"],
      [{ ...ok, kind: ProviderKind.OAUTH }, "enterprise_idp"],
    ] as Array<[Parameters<typeof providers.registerProvider>[0], string]>) {
      expect(await failure(providers.registerProvider(req)), field).toMatchObject({ code: Code.InvalidArgument, metadata: { field } });
    }
    expect((await providers.listProviders({})).providers.map((p) => p.id)).toEqual(["corp", "crm"]);
  });
  it("refuses to delete an enterprise IdP while an enterprise-managed provider derives its tokens from it", async () => {
    await providers.registerProvider({ id: "corp-rt", issuer: idp.issuer, clientId: idp.clientId, clientSecret: idp.clientSecret, allowInsecureHttp: true });
    await providers.registerProvider({ ...base, id: "crm3", enterpriseIdp: "corp-rt", issuer: as.issuer, resource: mcp.url, clientId: as.clientId, clientSecret: as.clientSecret });
    expect(await failure(providers.deleteProvider({ id: "corp-rt" }))).toMatchObject({
      code: Code.FailedPrecondition,
      reason: "PROVIDER_IN_USE",
      metadata: { provider: "corp-rt", dependents: "crm3" },
    });
    expect((await providers.listProviders({})).providers.map((p) => p.id)).toContain("corp-rt");
    await providers.deleteProvider({ id: "crm3" });
    await providers.deleteProvider({ id: "corp-rt" });
    expect((await providers.listProviders({})).providers.map((p) => p.id)).toEqual(["corp", "crm"]);
  });
});
