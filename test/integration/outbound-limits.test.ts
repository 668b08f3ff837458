import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it, vi } from "vitest";
import { ProviderService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { failure } from "../helpers/failure.js";
import { startBigBodyServer, startFakeIssuer, type BigBodyServer, type FakeIssuer } from "../helpers/outbound-servers.js";
import { startService, type TestService } from "../helpers/service.js";

/** The body cap of every provider response, and a reload of the outbound block. */
describe("outbound.max_response_bytes and reload", () => {
  const TOTAL = 50 * 1024 * 1024;
  let big: BigBodyServer;
  let idp: FakeIssuer;
  let svc: TestService;
  const yamlProviders = () => [{ id: "big", issuer: big.url, client_id: "c", client_secret: "s", allow_insecure_http: true }];

  beforeAll(async () => {
    big = await startBigBodyServer(TOTAL);
    idp = await startFakeIssuer(() => ({}));
    svc = await startService({
      dialect: "sqlite",
      yaml: { providers: yamlProviders(), outbound: { allow_hosts: [new URL(big.url).host], allow_insecure_http: true } },
      overrides: { loadConfig: () => loadConfig(svc.env) },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await big?.close();
    await idp?.close();
  });


  it("cuts a 50 MB discovery document off at the cap while reading, for a YAML provider and a runtime one", async () => {
    const providers = createClient(ProviderService, createGrpcTransport({ baseUrl: svc.url }));
    const listed = await providers.listProviders({});
    // The YAML provider is listed without endpoints: its discovery failed at the cap.
    expect(listed.providers.find((p) => p.id === "big")?.endpoints?.tokenEndpoint ?? "").toBe("");
    const err = await failure(providers.registerProvider({ id: "big-runtime", issuer: big.url, clientId: "c", clientSecret: "s", allowInsecureHttp: true }));
    expect(err).toMatchObject({ code: Code.FailedPrecondition, reason: "PROVIDER_SETUP_FAILED" });
    const cut = svc.logs.lines().filter((l) => l.msg === "provider response body larger than outbound.max_response_bytes; reading stopped");
    expect(cut.map((l) => l.provider)).toEqual(expect.arrayContaining(["big", "big-runtime"]));
    expect(cut[0]).toMatchObject({ maxResponseBytes: 1024 * 1024 });
    // The server could write only what the socket buffers held beyond the cap: nowhere near the 50 MB (each try reads at most 1 MiB).
    expect(big.written).toBeLessThan(TOTAL / 2);
  });

  it("applies a changed outbound block on reload: an allowed host becomes reachable, a removed one refused", async () => {
    const providers = createClient(ProviderService, createGrpcTransport({ baseUrl: svc.url }));
    const register = (id: string) => providers.registerProvider({ id, issuer: idp.url, clientId: "c", clientSecret: "s", allowInsecureHttp: true });
    expect(await failure(register("before"))).toMatchObject({ reason: "DESTINATION_NOT_ALLOWED", metadata: { rule: "private_address" } });
    const write = (outbound: Record<string, unknown>) =>
      writeFileSync(join(svc.dir, "config.yaml"), stringify({ providers: yamlProviders(), outbound }));
    write({ allow_hosts: [new URL(idp.url).host], allow_insecure_http: true });
    expect(await svc.app.reload("test")).toMatchObject({ ok: true, changed: true });
    expect((await register("after")).provider?.id).toBe("after");
    write({ allow_hosts: [new URL(idp.url).host] });
    expect(await svc.app.reload("test")).toMatchObject({ ok: true, changed: true });
    expect(await failure(register("no-http"))).toMatchObject({ code: Code.InvalidArgument, metadata: { field: "allow_insecure_http" } });
  });
});

describe("the back-channel route cannot make the service fetch on an attacker's schedule", () => {
  let noKeys: FakeIssuer;
  let noMeta: FakeIssuer;
  let svc: TestService;
  const JUNK = "eyJhbGciOiJSUzI1NiIsImtpZCI6Imp1bmsifQ.eyJzdWIiOiJtYWxsb3J5In0.c2lnbmF0dXJl";
  const post = (provider: string) =>
    fetch(`${svc.httpUrl}/oidc/backchannel-logout/${provider}`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: JUNK }),
    });

  beforeAll(async () => {
    noKeys = await startFakeIssuer(() => ({}), { jwksStatus: 500 });
    noMeta = await startFakeIssuer(() => ({}), { discoveryStatus: 500 });
    const yamlProvider = (id: string, issuer: string) => ({ id, issuer, client_id: "c", client_secret: "s", allow_insecure_http: true });
    svc = await startService({
      dialect: "sqlite",
      yaml: { providers: [yamlProvider("nokeys", noKeys.url), yamlProvider("nometa", noMeta.url)], refresh: { max_attempts: 1 } },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await noKeys?.close();
    await noMeta?.close();
  });

  it("20 junk logout tokens while the JWKS has never loaded make one JWKS request; a failed discovery is not retried either", async () => {
    const statuses: number[] = [];
    for (let i = 0; i < 20; i++) statuses.push((await post("nokeys")).status);
    expect(statuses).toEqual(Array(20).fill(503));
    expect(noKeys.seen.filter((p) => p === "/jwks")).toHaveLength(1);
    // The start-up discovery (ahead of any call) failed too; it is logged, not remembered, so the first call tries once more.
    await vi.waitFor(() => expect(svc.logs.lines().some((l) => l.msg === "provider discovery failed" && l.provider === "nometa" && l.ahead === true)).toBe(true));
    const discoveries = () => noMeta.seen.filter((p) => p.startsWith("/.well-known/")).length;
    const atStart = discoveries();
    const second: number[] = [];
    for (let i = 0; i < 20; i++) second.push((await post("nometa")).status);
    expect(second.filter((s) => s === 503).length).toBeGreaterThan(0);
    expect(second.every((s) => s === 503 || s === 429)).toBe(true);
    expect(discoveries() - atStart).toBeLessThanOrEqual(1);
  });

  it("rate limits the route per client address and per provider: 429 with Retry-After", async () => {
    const answers = await Promise.all(Array.from({ length: 80 }, () => post("nokeys")));
    const limited = answers.filter((r) => r.status === 429);
    expect(limited.length).toBeGreaterThan(0);
    expect(limited[0]!.headers.get("retry-after")).toBe("1");
    expect(svc.logs.lines().some((l) => l.backchannelLogout === true && l.reason === "rate_limited")).toBe(true);
    expect(noKeys.seen.filter((p) => p === "/jwks")).toHaveLength(1);
  });
});
