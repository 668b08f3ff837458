import { spawn } from "node:child_process";
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { createHash } from "node:crypto";
import { toJsonString } from "@bufbuild/protobuf";
import { timestampDate, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { Code, createClient, type Client } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parse, stringify } from "yaml";
import { EventSchema, ProviderService, SessionStatus, TokenService, type Event } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { failure } from "../helpers/failure.js";
import { startTestProvider, type TestProvider, type TestTokenSet } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { watchConnect, watchGrpcJs, type Watch } from "../helpers/watch.js";

const CREDS = {
  admin: "admin-credential-0123456789abcdef",
  gateway: "gateway-credential-0123456789abcdef",
  bound: "bound-credential-0123456789abcdef",
  watcher: "watcher-credential-0123456789abcdef",
};
const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");

/**
 * Session status and events for each transition, against a real
 * oidc-provider, watched with grpc-js and a Connect client (and curl):
 * a provider that answers 500 and recovers, a revoked grant, back-channel
 * logout, RevokeSession, providers registered and deleted.
 */
describe("connection health: status, events and WatchEvents", () => {
  let provider: TestProvider;
  let svc: TestService;
  let tokens: Client<typeof TokenService>;
  let providers: Client<typeof ProviderService>;
  const logins: TestTokenSet[] = [];
  const watches: Watch[] = [];
  const watch = (w: Watch) => (watches.push(w), w);

  async function login(user: string): Promise<TestTokenSet> {
    const set = await provider.login(user);
    logins.push(set);
    return set;
  }

  async function store(user: string, set: TestTokenSet, options: { expired?: boolean; provider?: string } = {}): Promise<string> {
    const res = await tokens.storeSession({
      userId: user,
      provider: options.provider ?? "corp",
      tokens: {
        accessToken: set.access_token,
        refreshToken: set.refresh_token,
        idToken: set.id_token,
        ...(options.expired ? { expiresAt: timestampFromDate(new Date(Date.now() - 1000)) } : { expiresIn: BigInt(set.expires_in) }),
      },
    });
    return res.sessionId;
  }

  async function statusOf(user: string, sessionId: string, includeEnded = false) {
    const { sessions } = await tokens.listSessions({ userId: user, includeEnded });
    return sessions.find((s) => s.sessionId === sessionId);
  }

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        providers: [provider.configEntry("corp"), provider.configEntry("other")],
        refresh: { lease_seconds: 5, provider_timeout_seconds: 2, max_attempts: 2, retry_base_delay_ms: 20 },
        outbound: { allow_private_networks: true, allow_insecure_http: true },
        callers: [
          { name: "admin", token_sha256: sha256(CREDS.admin), rpcs: ["*"] },
          { name: "gateway", token_sha256: sha256(CREDS.gateway), rpcs: ["*"], providers: ["corp"] },
          { name: "bound", token_sha256: sha256(CREDS.bound), rpcs: ["*"], user_binding: "session_id" },
          { name: "watcher", token_sha256: sha256(CREDS.watcher), rpcs: ["WatchEvents"] },
        ],
      },
      // App.reload() reads the YAML file again, as start-up did.
      overrides: {
        loadConfig: () =>
          loadConfig({
            TOKEN_SERVICE_ADDR: "127.0.0.1:0",
            TOKEN_SERVICE_HTTP_ADDR: "127.0.0.1:0",
            TOKEN_SERVICE_ADMIN_ADDR: "127.0.0.1:0",
            DATABASE_URL: `sqlite:${join(svc.dir, "sessions.db")}`,
            TOKEN_SERVICE_CONFIG: join(svc.dir, "config.yaml"),
            TOKEN_SERVICE_ENCRYPTION_KEYS: svc.keys!,
          }),
      },
    });
    const transport = createGrpcTransport({ baseUrl: svc.url, interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${CREDS.admin}`), next(req))] });
    tokens = createClient(TokenService, transport);
    providers = createClient(ProviderService, transport);
  });
  afterAll(async () => {
    for (const w of watches) w.close();
    await Promise.all(watches.map((w) => w.ended));
    await svc?.close();
    await provider?.close();
  });

  it("shows each transition in ListSessions and as one event, to watchers on both listeners, within their scope", async () => {
    const all = watch(watchConnect(svc.httpUrl, {}, { bearer: CREDS.admin }));
    const gateway = watch(watchGrpcJs(svc.url, {}, { bearer: CREDS.gateway }));
    const reauthOnly = watch(watchConnect(svc.httpUrl, { kinds: ["session.reauth_required"], userId: "bob" }, { bearer: CREDS.admin }));
    await Promise.all([all.started(), gateway.started(), reauthOnly.started()]);
    expect(await svc.app.metrics.registry.getSingleMetricAsString("token_service_event_watchers")).toMatch(/^token_service_event_watchers 3$/m);

    // A provider that answers 500 (both attempts), then recovers.
    const ann = await store("ann", await login("ann"), { expired: true });
    provider.faults.push({ kind: "status", status: 500 }, { kind: "status", status: 500 });
    expect((await failure(tokens.getToken({ userId: "ann", sessionId: ann }))).code).toBe(Code.Unavailable);
    const failing = (await statusOf("ann", ann))!;
    expect(failing.status).toBe(SessionStatus.REFRESH_FAILING);
    expect(failing.refreshFailures).toBeGreaterThanOrEqual(1);
    expect(failing.lastError).toBe("http_500");
    expect(timestampDate(failing.failingSince!).getTime()).toBeLessThanOrEqual(Date.now());
    expect((await tokens.getToken({ userId: "ann", sessionId: ann })).token).toBeTruthy();
    expect((await statusOf("ann", ann))!.status).toBe(SessionStatus.ACTIVE);

    // A revoked grant: the refresh token was used elsewhere (rotation), so the provider refuses it.
    const bobLogin = await login("bob");
    const bob = await store("bob", bobLogin, { expired: true });
    expect((await provider.redeem(bobLogin.refresh_token)).status).toBe(200);
    expect((await failure(tokens.getToken({ userId: "bob", sessionId: bob }))).reason).toBe("REAUTH_REQUIRED");
    const reauth = (await statusOf("bob", bob))!;
    expect(reauth).toMatchObject({ status: SessionStatus.REAUTH_REQUIRED, reauthReason: "invalid_grant" });
    expect(reauth.reauthAt).toBeDefined();
    // Bob reconnects in place (StartAuthorization with his session id), then steps the live session up.
    const again = async () => {
      const start = await tokens.startAuthorization({ userId: "bob", provider: "corp", sessionId: bob, redirectUri: provider.redirectUri });
      const done = await tokens.completeAuthorization({ userId: "bob", callbackUrl: await provider.authorize(start.authorizationUrl, "bob") });
      expect(done).toMatchObject({ steppedUp: true, sessionId: bob });
    };
    await again();
    expect((await statusOf("bob", bob))!).toMatchObject({ status: SessionStatus.ACTIVE, reauthReason: "" });
    expect(timestampDate((await statusOf("bob", bob))!.accessExpiresAt!).getTime()).toBeGreaterThan(Date.now());
    await again();

    // Back-channel logout.
    const tara = await store("tara", await login("tara"));
    const res = await fetch(`${svc.httpUrl}/oidc/backchannel-logout/corp`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: await provider.logoutToken(provider.clientId, { sub: "tara" }) }),
    });
    expect(res.status).toBe(200);
    expect(await statusOf("tara", tara)).toBeUndefined();
    expect(await statusOf("tara", tara, true)).toMatchObject({ status: SessionStatus.LOGGED_OUT, endReason: "backchannel_logout", refreshable: false, keyId: "" });

    // RevokeSession: ended, shown with include_ended only; GetToken and a second RevokeSession answer as for an unknown id.
    await tokens.revokeSession({ userId: "ann", sessionId: ann });
    expect(await statusOf("ann", ann)).toBeUndefined();
    expect(await statusOf("ann", ann, true)).toMatchObject({ status: SessionStatus.REVOKED, endReason: "revoke_session" });
    expect((await failure(tokens.getToken({ userId: "ann", sessionId: ann }))).code).toBe(Code.NotFound);
    const unknown = await failure(tokens.revokeSession({ userId: "ann", sessionId: "x".repeat(43) }));
    expect(await failure(tokens.revokeSession({ userId: "ann", sessionId: ann }))).toMatchObject({ code: unknown.code, reason: unknown.reason });

    // Another provider's session, and a runtime provider registered and deleted with its sessions.
    await store("olga", await login("olga"), { provider: "other" });
    await providers.registerProvider({ id: "rt", issuer: provider.issuer, clientId: provider.clientId, clientSecret: provider.clientSecret, allowInsecureHttp: true });
    await store("rita", await login("rita"), { provider: "rt" });
    expect((await providers.deleteProvider({ id: "rt", revokeSessions: true })).sessionsRevoked).toBe(1);

    const expected = [
      ["session.created", "ann", ""],
      ["session.refresh_failing", "ann", "http_500"],
      ["session.recovered", "ann", ""],
      ["session.created", "bob", ""],
      ["session.reauth_required", "bob", "invalid_grant"],
      ["session.reconnected", "bob", ""],
      ["session.stepped_up", "bob", ""],
      ["session.created", "tara", ""],
      ["session.logged_out", "tara", "backchannel_logout"],
      ["session.revoked", "ann", "revoke_session"],
      ["session.created", "olga", ""],
      ["provider.registered", "", "static"],
      ["session.created", "rita", ""],
      ["session.revoked", "rita", "provider_deleted"],
      ["provider.deleted", "", ""],
    ];
    const shape = (e: Event) => [e.kind, e.userId, e.reason];
    const seen = await all.until((ev) => ev.length >= expected.length);
    expect(seen.map(shape)).toEqual(expected);
    expect(seen.find((e) => e.kind === "session.refresh_failing")!.detail).toEqual({ failures: "1" });
    expect(seen.filter((e) => e.userId === "ann" && e.kind.startsWith("session.")).every((e) => e.sessionId === ann)).toBe(true);
    // The gateway (providers: [corp]) sees corp's events only, in the same order, with the same ids and cursors.
    const corp = seen.filter((e) => e.provider === "corp");
    expect((await gateway.until((ev) => ev.length >= corp.length)).map((e) => [e.id, e.cursor, e.kind])).toEqual(corp.map((e) => [e.id, e.cursor, e.kind]));
    expect((await reauthOnly.until((ev) => ev.length >= 1)).map(shape)).toEqual([["session.reauth_required", "bob", "invalid_grant"]]);
    const cursors = seen.map((e) => BigInt(e.cursor));
    expect(cursors).toEqual([...cursors].sort((a, b) => (a < b ? -1 : 1)));

    // A watcher that resumes from a cursor gets exactly what came after it.
    const resumed = watch(watchGrpcJs(svc.url, { resumeCursor: seen[4]!.cursor }, { bearer: CREDS.admin }));
    expect((await resumed.until((ev) => ev.length >= expected.length - 5)).map((e) => e.id)).toEqual(seen.slice(5).map((e) => e.id));
    expect(resumed.messages[0]!.event).toBeUndefined();
    expect(resumed.messages[0]!.cursor).toBe(seen[4]!.cursor);

    // No token, client secret or caller credential in any event or log line; full session ids only in events.
    const secrets = [...logins.flatMap((l) => [l.access_token, l.refresh_token, l.id_token]), provider.clientSecret, ...Object.values(CREDS)];
    const eventText = all.messages.map((m) => (m.event ? toJsonString(EventSchema, m.event) : m.cursor)).join("\n");
    const logText = svc.logs.text();
    for (const s of secrets) {
      expect(eventText).not.toContain(s);
      expect(logText).not.toContain(s);
    }
    for (const id of [ann, bob, tara]) expect(logText).not.toContain(id);
  });

  it("refuses what the caller may not see, an unknown kind, and a cursor that is not one", async () => {
    const end = (w: Watch) => watch(w).ended;
    expect(await end(watchConnect(svc.httpUrl, { provider: "other" }, { bearer: CREDS.gateway }))).toMatchObject({ code: Code.PermissionDenied });
    expect(await end(watchGrpcJs(svc.url, {}, { bearer: CREDS.bound }))).toMatchObject({ code: Code.PermissionDenied, reason: "USER_NOT_BOUND" });
    expect(await end(watchGrpcJs(svc.url, { userId: "ann" }, { bearer: CREDS.bound }))).toMatchObject({ code: Code.PermissionDenied, reason: "USER_NOT_BOUND" });
    expect(await end(watchConnect(svc.httpUrl, {}, {}))).toMatchObject({ code: Code.Unauthenticated });
    expect(await end(watchConnect(svc.httpUrl, { kinds: ["session.exploded"] }, { bearer: CREDS.admin }))).toMatchObject({ code: Code.InvalidArgument });
    expect(await end(watchConnect(svc.httpUrl, { resumeCursor: "12x" }, { bearer: CREDS.admin }))).toMatchObject({ code: Code.InvalidArgument });
    expect(await end(watchConnect(svc.httpUrl, { resumeCursor: "999999999" }, { bearer: CREDS.admin }))).toMatchObject({ code: Code.OutOfRange, reason: "CURSOR_AHEAD" });
  });

  it("curl can watch over HTTP/1.1, as the docs show", async () => {
    // The command of docs/connection-health.md#watching-events, as written, with this test's address.
    const page = readFileSync(fileURLToPath(new URL("../../docs/connection-health.md", import.meta.url)), "utf8");
    const documented = page.split("\n").find((l) => l.startsWith("printf ") && l.includes("WatchEvents"));
    expect(documented).toBeDefined();
    const command = documented!.replace("http://127.0.0.1:50052", svc.httpUrl);
    const child = spawn("bash", ["-c", command], { env: { ...process.env, TOKEN: CREDS.admin } });
    let out = "";
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`curl printed: ${out}`)), 20_000);
      child.stdout.on("data", (b: Buffer) => {
        out += b.toString("latin1");
        if (out.includes('"kind":"provider.deleted"')) {
          clearTimeout(timer);
          resolve();
        }
      });
    });
    child.kill();
    expect(out).toContain('"kind":"session.created"');
    expect(out).toMatch(/"cursor":"\d+"/);
  });

  it("a reload re-admits open streams: a removed caller's ends, a changed scope reconnects, an unchanged one goes on", async () => {
    const removed = watch(watchConnect(svc.httpUrl, {}, { bearer: CREDS.gateway }));
    const changed = watch(watchGrpcJs(svc.url, {}, { bearer: CREDS.admin }));
    const unchanged = watch(watchGrpcJs(svc.url, {}, { bearer: CREDS.watcher }));
    await Promise.all([removed, changed, unchanged].map((w) => w.started()));
    const file = join(svc.dir, "config.yaml");
    const before = readFileSync(file, "utf8");
    const yaml = parse(before) as { callers: Array<{ name: string; providers?: string[] }> };
    yaml.callers = yaml.callers.filter((c) => c.name !== "gateway").map((c) => (c.name === "admin" ? { ...c, providers: ["corp"] } : c));
    writeFileSync(file, stringify(yaml));
    try {
      expect(await svc.app.reload()).toMatchObject({ ok: true, changed: true });
      expect(await removed.ended).toMatchObject({ code: Code.Unauthenticated });
      expect(await changed.ended).toMatchObject({ code: Code.Unavailable, reason: "CALLER_CHANGED" });
      await store("uma", await login("uma"));
      expect((await unchanged.until((ev) => ev.some((e) => e.userId === "uma"))).length).toBeGreaterThan(0);
    } finally {
      writeFileSync(file, before);
      expect((await svc.app.reload()).ok).toBe(true);
    }
  });

  it("a cursor older than the retention gets OUT_OF_RANGE, not a silent gap", async () => {
    const first = (await new Promise<Watch>((resolve) => {
      const w = watch(watchConnect(svc.httpUrl, { fromOldest: true }, { bearer: CREDS.admin }));
      void w.until((ev) => ev.length >= 1).then(() => resolve(w));
    })).events()[0]!;
    // The sweeper, run as if the retention (7 days) had passed.
    const swept = await svc.app.sweeper.sweep(new Date(Date.now() + 8 * 86_400_000));
    expect(swept.events).toBeGreaterThanOrEqual(16);
    expect(swept.endedSessions).toBeGreaterThanOrEqual(3);
    const stale = watch(watchGrpcJs(svc.url, { resumeCursor: first.cursor }, { bearer: CREDS.admin }));
    expect(await stale.ended).toMatchObject({ code: Code.OutOfRange, reason: "CURSOR_EXPIRED" });
    expect(stale.events()).toEqual([]);
    expect(await statusOf("ann", "", true)).toBeUndefined();
    expect((await tokens.listSessions({ userId: "tara", includeEnded: true })).sessions).toEqual([]);
  });
});
