import { writeFileSync } from "node:fs";
import { createServer, type AddressInfo } from "node:net";
import { join } from "node:path";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ProviderService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startFakeIssuer, type FakeIssuer } from "../helpers/outbound-servers.js";
import { startService, type TestService } from "../helpers/service.js";

/** A port nothing listens on (yet). */
async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as AddressInfo;
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

const discoveryLine = (svc: TestService, msg: string, provider: string) =>
  svc.logs.lines().find((l) => l.msg === msg && l.provider === provider && l.ahead === true);

describe("provider discovery ahead of the first call", () => {
  let provider: TestProvider;
  let svc: TestService;

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({ dialect: "sqlite", provider, yaml: { refresh: { background: { enabled: false } } } });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  it("discovers a YAML provider at start-up, so the first refresh makes only its token request", async () => {
    await vi.waitFor(() => expect(discoveryLine(svc, "provider discovery done", "corp")).toBeDefined());
    expect(provider.stats.discoveries).toBe(1);
    const tokens = await provider.login("ahead-user");
    const { sessionId } = await svc.client.storeSession({
      userId: "ahead-user",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
    });
    const refreshesBefore = provider.stats.refreshes;
    const got = await svc.client.getToken({ userId: "ahead-user", sessionId });
    expect(got.token).not.toBe(tokens.access_token);
    expect(provider.stats.refreshes).toBe(refreshesBefore + 1);
    // No second discovery, and none of the refresh's own.
    expect(provider.stats.discoveries).toBe(1);
    expect(svc.logs.lines().filter((l) => l.msg === "provider discovery done")).toHaveLength(1);
  });
});

describe("a start-up discovery that fails", () => {
  let port: number;
  let issuer: FakeIssuer | undefined;
  let later: FakeIssuer;
  let svc: TestService;
  const yamlProvider = (id: string, url: string) => ({ id, issuer: url, client_id: "c", client_secret: "s", allow_insecure_http: true });
  const listed = async (id: string) => {
    const providers = createClient(ProviderService, createGrpcTransport({ baseUrl: svc.url }));
    return (await providers.listProviders({})).providers.find((p) => p.id === id);
  };

  beforeAll(async () => {
    port = await freePort();
    later = await startFakeIssuer(() => ({}));
    svc = await startService({
      dialect: "sqlite",
      yaml: { providers: [yamlProvider("late", `http://127.0.0.1:${port}`)], refresh: { max_attempts: 1 } },
      overrides: { loadConfig: () => loadConfig(svc.env) },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await issuer?.close();
    await later?.close();
  });


  it("is logged as such and not remembered: the first call that needs the metadata asks again at once", async () => {
    const failed = await vi.waitFor(() => {
      const line = discoveryLine(svc, "provider discovery failed", "late");
      expect(line).toBeDefined();
      return line!;
    });
    expect(failed).toMatchObject({ level: "warn", code: "network" });
    expect(failed).not.toHaveProperty("cooldownMs");
    // The provider comes up; a remembered failure would answer from its 30 s cooldown without asking.
    issuer = await startFakeIssuer(() => ({}), { port });
    expect((await listed("late"))?.endpoints?.tokenEndpoint).toBe(`http://127.0.0.1:${port}/token`);
    expect(issuer.seen.filter((p) => p.startsWith("/.well-known/"))).toHaveLength(1);
  });

  it("discovers a provider a reload adds, ahead of its first call", async () => {
    writeFileSync(
      join(svc.dir, "config.yaml"),
      stringify({ providers: [yamlProvider("late", `http://127.0.0.1:${port}`), yamlProvider("added", later.url)], refresh: { max_attempts: 1 } }),
    );
    expect(await svc.app.reload("test")).toMatchObject({ ok: true, changed: true });
    await vi.waitFor(() => expect(discoveryLine(svc, "provider discovery done", "added")).toBeDefined());
    expect(later.seen.filter((p) => p.startsWith("/.well-known/"))).toHaveLength(1);
    // The unchanged provider keeps its client and its metadata: no discovery again.
    expect(issuer!.seen.filter((p) => p.startsWith("/.well-known/"))).toHaveLength(1);
  });
});
