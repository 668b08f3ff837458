import { execFile as execFileCb } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { createFileRegistry, create } from "@bufbuild/protobuf";
import { timestampFromDate, FileDescriptorSetSchema, FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import { fromBinary } from "@bufbuild/protobuf";
import { Code, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ServerReflection, ServerReflectionRequestSchema, type ServerReflectionRequest } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionAlpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health, HealthCheckResponse_ServingStatus as Status } from "../../gen/health/v1/health_pb.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { spawnService } from "../helpers/process.js";
import { startService, type TestService } from "../helpers/service.js";

const execFile = promisify(execFileCb);
const root = new URL("../..", import.meta.url).pathname;
const buf = join(root, "node_modules/.bin/buf");

/** Sends reflection requests on one bidirectional stream and collects the answers. */
async function reflect(url: string, requests: Array<Pick<ServerReflectionRequest, "messageRequest">>) {
  const client = createClient(ServerReflection, createGrpcTransport({ baseUrl: url }));
  async function* input() {
    for (const r of requests) yield create(ServerReflectionRequestSchema, r);
  }
  const answers = [];
  for await (const a of client.serverReflectionInfo(input())) answers.push(a);
  return answers;
}

describe("operability", () => {
  let provider: TestProvider;
  let svc: TestService;

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({ dialect: "sqlite", provider });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  it("describes the service through server reflection, as grpcurl list/describe do", async () => {
    const [list, bySymbol, byFile, missing] = await reflect(svc.url, [
      { messageRequest: { case: "listServices", value: "" } },
      { messageRequest: { case: "fileContainingSymbol", value: "tokenservice.v1.TokenService" } },
      { messageRequest: { case: "fileByFilename", value: "health/v1/health.proto" } },
      { messageRequest: { case: "fileContainingSymbol", value: "no.such.Symbol" } },
    ]);
    expect(list!.messageResponse.case).toBe("listServicesResponse");
    const names = (list!.messageResponse.value as { service: Array<{ name: string }> }).service.map((s) => s.name);
    expect(names).toEqual(
      expect.arrayContaining(["tokenservice.v1.TokenService", "tokenservice.v1.ProviderService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection", "grpc.reflection.v1alpha.ServerReflection"]),
    );
    // The file and its imports are enough to rebuild the service's full description.
    expect(bySymbol!.messageResponse.case).toBe("fileDescriptorResponse");
    const protos = (bySymbol!.messageResponse.value as { fileDescriptorProto: Uint8Array[] }).fileDescriptorProto.map((b) =>
      fromBinary(FileDescriptorProtoSchema, b),
    );
    expect(protos.map((p) => p.name)).toEqual(["tokenservice/v1/token_service.proto", "google/protobuf/timestamp.proto"]);
    const registry = createFileRegistry(create(FileDescriptorSetSchema, { file: protos.reverse() }));
    const service = registry.getService("tokenservice.v1.TokenService")!;
    expect(service.methods.map((m) => m.name)).toEqual([
      "StoreSession",
      "GetToken",
      "RevokeSession",
      "ListSessions",
      "RevokeUserSessions",
      "StartAuthorization",
      "CompleteAuthorization",
    ]);
    expect(registry.getService("tokenservice.v1.ProviderService")!.methods.map((m) => m.name)).toEqual([
      "RegisterProvider",
      "ListProviders",
      "DeleteProvider",
    ]);
    expect(registry.getMessage("tokenservice.v1.GetTokenRequest")!.fields.map((f) => f.name)).toContain("min_valid_seconds");
    expect(byFile!.messageResponse.case).toBe("fileDescriptorResponse");
    expect(missing!.messageResponse.case).toBe("errorResponse");
    expect((missing!.messageResponse.value as { errorCode: number }).errorCode).toBe(5);
    // The older v1alpha name answers the same.
    const alpha = createClient(ServerReflectionAlpha, createGrpcTransport({ baseUrl: svc.url }));
    async function* one() {
      yield { messageRequest: { case: "listServices" as const, value: "" } };
    }
    for await (const a of alpha.serverReflectionInfo(one())) expect(a.messageResponse.case).toBe("listServicesResponse");
  });

  it("works with `buf curl` and no local schema: list services, list methods, call GetToken", async () => {
    const tokens = await provider.login("reflected");
    const { sessionId } = await svc.client.storeSession({
      userId: "reflected",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, expiresAt: timestampFromDate(new Date(Date.now() + 3600_000)) },
    });
    const base = ["curl", "--protocol", "grpc", "--http2-prior-knowledge"];
    const services = await execFile(buf, [...base, "--list-services", svc.url]);
    expect(services.stdout.split("\n")).toContain("tokenservice.v1.TokenService");
    const methods = await execFile(buf, [...base, "--list-methods", svc.url]);
    expect(methods.stdout).toContain("tokenservice.v1.TokenService/GetToken");
    const call = await execFile(buf, [
      ...base,
      "-d",
      JSON.stringify({ user_id: "reflected", session_id: sessionId }),
      `${svc.url}/tokenservice.v1.TokenService/GetToken`,
    ]);
    expect((JSON.parse(call.stdout) as { token: string }).token).toBe(tokens.access_token);
  });

  it("exposes refresh outcomes, RPC counts and single-flight figures on /metrics, and nothing secret", async () => {
    const tokens = await provider.login("metrics");
    const { sessionId } = await svc.client.storeSession({
      userId: "metrics",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
    });
    provider.faults.push({ kind: "delay", ms: 100 });
    await Promise.all(Array.from({ length: 50 }, () => svc.client.getToken({ userId: "metrics", sessionId })));
    const res = await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`);
    expect(res.status).toBe(200);
    expect(res.headers.get("content-type")).toContain("text/plain");
    const text = await res.text();
    const value = (re: RegExp) => Number(re.exec(text)?.[1] ?? NaN);
    expect(value(/^token_service_refresh_total\{provider="corp",result="success"\} (\d+)/m)).toBeGreaterThanOrEqual(1);
    expect(value(/^token_service_rpc_requests_total\{method="tokenservice\.v1\.TokenService\/GetToken",code="ok"\} (\d+)/m)).toBeGreaterThanOrEqual(50);
    expect(value(/^token_service_singleflight_coalesced_total (\d+)/m)).toBeGreaterThanOrEqual(49);
    expect(text).toMatch(/^token_service_rpc_duration_seconds_bucket\{le="0\.005",method="tokenservice\.v1\.TokenService\/GetToken",code="ok"\}/m);
    expect(text).toMatch(/^token_service_db_pool_connections\{pool="write",state="used"\}/m);
    expect(text).toMatch(/^token_service_serving 1/m);
    expect(text).toMatch(/^process_resident_memory_bytes/m);
    for (const secret of [sessionId, tokens.access_token, tokens.refresh_token, provider.clientSecret, "metrics"]) {
      expect(text).not.toContain(secret);
    }
    expect((await fetch(`http://127.0.0.1:${svc.app.adminPort}/healthz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${svc.app.adminPort}/readyz`)).status).toBe(200);
    expect((await fetch(`http://127.0.0.1:${svc.app.adminPort}/nope`)).status).toBe(404);
  });

  it("a full GetToken cache stores a session on its second read, not its first, and counts what it declined on /metrics", async () => {
    const small = await startService({ dialect: "sqlite", provider, yaml: { cache: { max_entries: 2 } } });
    try {
      const ids: string[] = [];
      for (const user of ["full-a", "full-b", "full-c"]) {
        const tokens = await provider.login(user);
        const { sessionId } = await small.client.storeSession({
          userId: user,
          provider: "corp",
          tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 3600n },
        });
        ids.push(sessionId);
      }
      const get = (i: number) => small.client.getToken({ userId: ["full-a", "full-b", "full-c"][i]!, sessionId: ids[i]! });
      const metric = async (re: RegExp) => Number(re.exec(await (await fetch(`http://127.0.0.1:${small.app.adminPort}/metrics`)).text())?.[1] ?? NaN);
      await get(0);
      await get(1); // a and b fill the cache
      expect(small.app.cache.size).toBe(2);
      const token = (await get(2)).token; // c: read, answered, not stored
      expect(token).not.toBe("");
      expect(small.app.cache.size).toBe(2);
      expect(await metric(/^token_service_cache_declined_total (\d+)/m)).toBe(1);
      // a and b are still hits.
      const hits = await metric(/^token_service_cache_lookups_total\{result="hit"\} (\d+)/m);
      await get(0);
      await get(1);
      expect(await metric(/^token_service_cache_lookups_total\{result="hit"\} (\d+)/m)).toBe(hits + 2);
      // c again: stored now, in place of the oldest; its next read is a hit.
      await get(2);
      await get(2);
      expect(await metric(/^token_service_cache_lookups_total\{result="hit"\} (\d+)/m)).toBe(hits + 3);
      expect(await metric(/^token_service_cache_declined_total (\d+)/m)).toBe(1);
    } finally {
      await small.close();
    }
  });

  it("answers health Check for the server and the token service, NOT_FOUND for others, and Watch streams", async () => {
    const health = createClient(Health, createGrpcTransport({ baseUrl: svc.url }));
    expect((await health.check({ service: "" })).status).toBe(Status.SERVING);
    expect((await health.check({ service: "tokenservice.v1.TokenService" })).status).toBe(Status.SERVING);
    await expect(health.check({ service: "nope" })).rejects.toMatchObject({ code: Code.NotFound });
    const ac = new AbortController();
    const seen: Status[] = [];
    try {
      for await (const r of health.watch({ service: "" }, { signal: ac.signal })) {
        seen.push(r.status);
        ac.abort(); // a watcher going away is normal: the stream ends
      }
    } catch (err) {
      expect(String(err)).toMatch(/aborted|canceled/);
    }
    expect(seen).toEqual([Status.SERVING]);
    // An unknown service is SERVICE_UNKNOWN on Watch (the stream stays open), per the protocol.
    const ac2 = new AbortController();
    try {
      for await (const r of health.watch({ service: "nope" }, { signal: ac2.signal })) {
        expect(r.status).toBe(Status.SERVICE_UNKNOWN);
        ac2.abort();
      }
    } catch {
      // aborted by us
    }
  });
});

describe("health on shutdown, reflection switched off, CLI", () => {
  let provider: TestProvider;
  let dir: string;
  let config: string;

  beforeAll(async () => {
    provider = await startTestProvider();
    dir = mkdtempSync(join(tmpdir(), "token-service-ops-"));
    config = join(dir, "config.yaml");
    writeFileSync(
      config,
      stringify({
        providers: [provider.configEntry()],
        reflection: false,
        shutdown_grace_seconds: 5,
      }),
    );
  });
  afterAll(async () => {
    await provider?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it("tells Watch streams and /readyz NOT_SERVING while draining, finishes the call, exits 0", async () => {
    const svc = await spawnService({ DATABASE_URL: `sqlite:${join(dir, "drain.db")}`, TOKEN_SERVICE_CONFIG: config });
    try {
      const health = createClient(Health, createGrpcTransport({ baseUrl: svc.url }));
      const statuses: Status[] = [];
      const watching = (async () => {
        for await (const r of health.watch({ service: "tokenservice.v1.TokenService" })) statuses.push(r.status);
      })();
      const client = (await import("../helpers/clients.js")).connectGrpcClient(svc.url);
      const tokens = await provider.login("drainer");
      const { sessionId } = await client.storeSession({
        userId: "drainer",
        provider: "corp",
        tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
      });
      provider.faults.push({ kind: "delay", ms: 1500 });
      const inflight = client.getToken({ userId: "drainer", sessionId });
      await new Promise((r) => setTimeout(r, 300));
      svc.kill("SIGTERM");
      await svc.waitForLine((l) => l.msg === "shutting down: draining calls");
      const ready = await fetch(`${svc.adminUrl}/readyz`);
      expect(ready.status).toBe(503);
      expect(await ready.text()).toContain("draining");
      expect((await inflight).token).not.toBe(tokens.access_token);
      await watching;
      expect(statuses).toEqual([Status.SERVING, Status.NOT_SERVING]);
      expect(await svc.exited).toBe(0);
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("does not serve reflection when switched off", async () => {
    const svc = await spawnService({ DATABASE_URL: `sqlite:${join(dir, "noreflect.db")}`, TOKEN_SERVICE_CONFIG: config });
    try {
      await expect(execFile(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-services", svc.url])).rejects.toThrow();
    } finally {
      svc.kill("SIGKILL");
    }
  });

  it("lists a user's sessions with `sessions list`, without ids or tokens unless asked", async () => {
    const db = `sqlite:${join(dir, "cli.db")}`;
    const keys = generateKeySpec("cli");
    const svc = await spawnService({ DATABASE_URL: db, TOKEN_SERVICE_CONFIG: config, TOKEN_SERVICE_ENCRYPTION_KEYS: keys });
    const client = (await import("../helpers/clients.js")).connectGrpcClient(svc.url);
    const tokens = await provider.login("lister");
    const { sessionId } = await client.storeSession({
      userId: "lister",
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 300n },
    });
    // A second session whose refresh fails (the provider answers 503 to every attempt), and a third, revoked.
    const failing = await client.storeSession({
      userId: "lister",
      provider: "corp",
      tokens: { accessToken: "at-expired", refreshToken: (await provider.login("lister")).refresh_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
    });
    for (let i = 0; i < 5; i++) provider.faults.push({ kind: "status", status: 503 });
    await expect(client.getToken({ userId: "lister", sessionId: failing.sessionId })).rejects.toThrow();
    provider.faults.length = 0;
    const revoked = await client.storeSession({ userId: "lister", provider: "corp", tokens: { accessToken: "at-revoked", expiresIn: 300n } });
    await client.revokeSession({ userId: "lister", sessionId: revoked.sessionId });
    svc.kill("SIGTERM");
    await svc.exited;
    const env = { DATABASE_URL: db, TOKEN_SERVICE_CONFIG: config, TOKEN_SERVICE_ENCRYPTION_KEYS: keys };
    const list = await spawnService(env, { args: ["sessions", "list", "--user", "lister"], expectListening: false });
    expect(await list.exited).toBe(0);
    expect(list.stdout()).toMatch(/SESSION\s+PROVIDER\s+STATUS/);
    expect(list.stdout()).toMatch(/~[A-Za-z0-9_-]{12}\s+corp\s+active/);
    expect(list.stdout()).toMatch(/~[A-Za-z0-9_-]{12}\s+corp\s+refresh_failing \(1 failure, since \d{4}-\d\d-\d\dT[\d:]+Z, last http_503\)/);
    expect(list.stdout()).toContain("2 sessions\n");
    expect(list.stdout()).not.toContain("revoked");
    const ended = await spawnService(env, { args: ["sessions", "list", "--user", "lister", "--include-ended"], expectListening: false });
    expect(await ended.exited).toBe(0);
    expect(ended.stdout()).toMatch(/~[A-Za-z0-9_-]{12}\s+corp\s+revoked \(revoke_session, \d{4}-\d\d-\d\dT[\d:]+Z\)/);
    expect(ended.stdout()).toContain("3 sessions (1 ended)");
    for (const secret of [sessionId, tokens.access_token, tokens.refresh_token]) expect(list.stdout()).not.toContain(secret);
    const withIds = await spawnService(env, { args: ["sessions", "list", "--user", "lister", "--show-ids"], expectListening: false });
    expect(await withIds.exited).toBe(0);
    expect(withIds.stdout()).toContain(sessionId);
  });

  it("checks config, database, keys, providers and clocks with `doctor`", async () => {
    const env = { DATABASE_URL: `sqlite:${join(dir, "doctor.db")}`, TOKEN_SERVICE_CONFIG: config };
    const good = await spawnService(env, { args: ["doctor"], expectListening: false });
    expect(await good.exited).toBe(0);
    const out = good.stdout();
    expect(out).toMatch(/^ok\s+config/m);
    expect(out).toMatch(/^ok\s+database/m);
    expect(out).toMatch(/^ok\s+provider corp\s+discovery in \d+ ms/m);
    expect(out).toMatch(/^ok\s+provider corp clock\s+skew [+-]\d+\.\d s/m);
    expect(out).toContain("all checks passed");
    expect(out).not.toContain(provider.clientSecret);

    const broken = join(dir, "broken.yaml");
    writeFileSync(broken, stringify({ providers: [{ id: "gone", issuer: "http://127.0.0.1:9", client_id: "c", client_secret: "s", allow_insecure_http: true }] }));
    const bad = await spawnService({ ...env, TOKEN_SERVICE_CONFIG: broken }, { args: ["doctor"], expectListening: false });
    expect(await bad.exited).toBe(1);
    expect(bad.stdout()).toMatch(/^FAIL\s+provider gone\s+unreachable/m);
    expect(bad.stdout()).toMatch(/1 check\(s\) failed/);
  });
});

describe("npm run demo", () => {
  it("walks through store, get, expiry, refresh and revoke, the code flow and two audiences, and exits 0", async () => {
    const tsx = join(root, "node_modules/.bin/tsx");
    const { stdout } = await execFile(tsx, [join(root, "scripts/demo.ts")], { cwd: root, timeout: 60_000 });
    expect(stdout).toContain("the provider saw 1 refresh request: one refresh served every caller");
    expect(stdout).toMatch(/GetToken now → NotFound/);
    // Two audiences: each token accepted by its own MCP server and refused by the other.
    expect(stdout.match(/; the MCP server accepts it/g)).toHaveLength(2);
    expect(stdout).toMatch(/HTTP 401: it is not for that server/);
    // Enterprise-managed (ID-JAG): a token the tool server accepts with no browser step, gone with the IdP session.
    expect(stdout).toContain("the CRM's MCP server accepts it");
    expect(stdout).toContain("GetToken → FAILED_PRECONDITION (NO_IDP_SESSION)");
    // Connection health: the reconnect prompt comes from a WatchEvents event, and the reconnect is heard too.
    expect(stdout).toMatch(/gateway sees session\.reauth_required \(invalid_grant, cursor \d+\) and tells Erin:\n\s+→ "reconnect your demo account: http/);
    expect(stdout).toContain("gateway sees session.reconnected: the prompt can go");
    // Forwarding: a streamed completion with the user's token, then with the fallback key.
    expect(stdout).toContain("Mia's access token, from the service");
    expect(stdout).toContain("the model server got the static key from forward[].fallback_key_file");
    expect(stdout).toContain("Demo complete.");
  });
});
