import { execFile as execFileCb, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { Code, ConnectError, createClient, type Client } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport } from "@connectrpc/connect-node";
import { Webhook } from "standardwebhooks";
import { parse, stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { TokenService, WebhookDeliveryState, WebhookService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { loadConfig } from "../../src/config.js";
import { sessionRef } from "../../src/logger.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { storeLoggedIn, until, WebhookReceiver } from "../helpers/webhook-receiver.js";

/**
 * Webhooks on one in-process service (SQLite) against real receivers on
 * port 0: signatures checked with the official `standardwebhooks` package
 * and with Debian's python3 running the docs' snippet, retries with one
 * webhook-id, a hanging receiver, the outbound policy, dead letters and the
 * manual retry (RPC and the docs' CLI commands), and no secret in any body,
 * log line or metric.
 */

const execFile = promisify(execFileCb);
const ROOT = new URL("../..", import.meta.url).pathname;
const PAGE = readFileSync(join(ROOT, "docs/connection-health.md"), "utf8");
const PYTHON = "/usr/bin/python3";

/** The fenced code blocks of a language in the page's Webhooks section. */
function blocks(lang: string): string[] {
  const section = PAGE.slice(PAGE.indexOf("\n## Webhooks\n"));
  return [...section.matchAll(new RegExp("```" + lang + "\\n([\\s\\S]*?)```", "g"))].map((m) => m[1]!);
}

/** The docs' way of making a secret, run as written. */
function makeSecret(): string {
  const command = blocks("yaml").length > 0 ? /`(echo "whsec_\$\(openssl rand -base64 32\)")`/.exec(PAGE)?.[1] : undefined;
  if (!command) throw new Error("the page shows no secret command");
  const out = spawnSync("sh", ["-c", command], { encoding: "utf8" });
  if (out.status !== 0) throw new Error(out.stderr);
  return out.stdout.trim();
}

const FAST = { interval_seconds: 0.1, retry_base_delay_seconds: 0.05, retry_max_delay_seconds: 0.2, timeout_seconds: 1, lease_seconds: 3 };

describe("webhooks (one service, SQLite)", () => {
  let provider: TestProvider;
  let svc: TestService;
  let receiver: WebhookReceiver;
  let flaky: WebhookReceiver;
  let secret: string;
  let webhooks: Client<typeof WebhookService>;
  let webhooksJson: Client<typeof WebhookService>;
  /** Tokens and session ids of the sessions stored: never in a body, a log line or a metric. */
  const secrets: string[] = [];

  const store = (user: string) => storeLoggedIn({ provider, secrets }, svc.client, user);

  beforeAll(async () => {
    [provider, receiver, flaky] = await Promise.all([startTestProvider(), WebhookReceiver.start(), WebhookReceiver.start()]);
    secret = makeSecret();
    // startService writes its config into a directory of its own: the secret file goes beside it, named relative to it.
    const dir = mkdtempSync(join(tmpdir(), "webhook-secret-"));
    writeFileSync(join(dir, "crm.secret"), `${secret}\n`);
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        outbound: { allow_private_networks: true, allow_insecure_http: true },
        webhooks: {
          ...FAST,
          endpoints: [
            { id: "crm", url: receiver.url, events: ["*"], secret_file: join(dir, "crm.secret") },
            { id: "flaky", url: flaky.url, events: ["session.revoked"], secret_file: join(dir, "crm.secret") },
          ],
        },
      },
    });
    webhooks = createClient(WebhookService, createGrpcTransport({ baseUrl: svc.url }));
    webhooksJson = createClient(WebhookService, createConnectTransport({ baseUrl: svc.httpUrl, httpVersion: "1.1", useBinaryFormat: false }));
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([provider?.close(), receiver?.stop(), flaky?.stop()]);
  });

  it("POSTs each event with Standard Webhooks headers that the standardwebhooks package verifies", async () => {
    const before = receiver.received.length;
    const sessionId = await store("wh-user-created");
    const got = await until(() => receiver.received.slice(before).find((r) => r.body.includes("wh-user-created")), "the session.created webhook");
    expect(got.headers["content-type"]).toBe("application/json");
    expect(String(got.headers["webhook-id"])).toMatch(/^msg_[A-Za-z0-9_-]+$/);
    expect(String(got.headers["webhook-signature"])).toMatch(/^v1,[A-Za-z0-9+/]+=*$/);
    const payload = new Webhook(secret).verify(got.body, got.headers as Record<string, string>) as { type: string; timestamp: string; data: Record<string, unknown> };
    expect(payload.type).toBe("session.created");
    expect(new Date(payload.timestamp).toISOString()).toBe(payload.timestamp);
    expect(payload.data).toMatchObject({ provider: "corp", user_id: "wh-user-created", session_ref: sessionRef(sessionId) });
    expect(String(payload.data.event_id)).toMatch(/^evt_/);
    expect(got.body).not.toContain(sessionId);
    // A body changed by one byte, or signed with another secret, does not verify.
    expect(() => new Webhook(secret).verify(got.body.replace("wh-user-created", "wh-user-createe"), got.headers as Record<string, string>)).toThrow();
    expect(() => new Webhook(`whsec_${Buffer.alloc(32, 7).toString("base64")}`).verify(got.body, got.headers as Record<string, string>)).toThrow();
    // The flaky webhook takes only session.revoked: it got nothing.
    expect(flaky.received.filter((r) => r.body.includes("wh-user-created"))).toEqual([]);
  });

  it("verifies with Debian's python3 and the docs' stdlib snippet, and refuses a tampered body", async () => {
    const [snippet] = blocks("python");
    expect(snippet).toContain("def verify(");
    const before = receiver.received.length;
    await store("wh-user-python");
    const got = await until(() => receiver.received.slice(before).find((r) => r.body.includes("wh-user-python")), "the webhook");
    const driver = `${snippet}
import json, os, sys
h = json.loads(os.environ["HEADERS"])
body = os.environ["BODY"].encode()
verify(os.environ["SECRET"], h, body)
try:
    verify(os.environ["SECRET"], h, body + b" ")
    sys.exit("a tampered body verified")
except ValueError:
    pass
print("verified")
`;
    const headers = { "webhook-id": got.headers["webhook-id"], "webhook-timestamp": got.headers["webhook-timestamp"], "webhook-signature": got.headers["webhook-signature"] };
    const { stdout } = await execFile(PYTHON, ["-c", driver], { env: { SECRET: secret, HEADERS: JSON.stringify(headers), BODY: got.body } });
    expect(stdout.trim()).toBe("verified");
  });

  it("retries a failing receiver with backoff, with the same webhook-id and body, until it answers 2xx", async () => {
    const sessionId = await store("wh-user-flaky");
    flaky.answers.push(500, 503, "hang");
    const before = flaky.received.length;
    await svc.client.revokeSession({ userId: "wh-user-flaky", sessionId });
    const attempts = await until(() => {
      const mine = flaky.received.slice(before);
      return mine.length >= 4 ? mine : undefined;
    }, "four attempts");
    expect(new Set(attempts.map((a) => a.headers["webhook-id"])).size).toBe(1);
    expect(new Set(attempts.map((a) => a.body)).size).toBe(1);
    for (const a of attempts) new Webhook(secret).verify(a.body, a.headers as Record<string, string>);
    const id = String(attempts[0]!.headers["webhook-id"]);
    const delivered = await until(async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ webhookId: "flaky" });
      const d = deliveries.find((x) => x.id === id);
      return d?.state === WebhookDeliveryState.DELIVERED ? d : undefined;
    }, "the delivery marked delivered");
    expect(delivered.attempts).toBe(4);
    expect(delivered.eventType).toBe("session.revoked");
    expect(delivered.lastStatus).toBe(200);
    // The hanging attempt cost one timeout (1 s here), then the next attempt went out.
    const metrics = await (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();
    expect(metrics).toMatch(/token_service_webhook_attempts_total\{webhook="flaky",result="timeout"\} [1-9]/);
    expect(metrics).toMatch(/token_service_webhook_attempts_total\{webhook="flaky",result="http_5xx"\} [2-9]/);
    expect(metrics).toMatch(/token_service_webhook_deliveries_total\{webhook="flaky",result="delivered"\} [1-9]/);
  });

  it("dead-letters a delivery at once when the receiver answers 410 Gone", async () => {
    const sessionId = await store("wh-user-gone");
    flaky.answers.push(410);
    const before = flaky.received.length;
    await svc.client.revokeSession({ userId: "wh-user-gone", sessionId });
    const got = await until(() => flaky.received.slice(before).find((r) => r.body.includes("wh-user-gone")), "the attempt");
    const dead = await until(async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ webhookId: "flaky", state: WebhookDeliveryState.DEAD });
      return deliveries.find((d) => d.id === got.headers["webhook-id"]);
    }, "the dead letter");
    expect(dead).toMatchObject({ attempts: 1, lastStatus: 410, lastError: "http_410" });
    expect(flaky.received.slice(before).filter((r) => r.body.includes("wh-user-gone"))).toHaveLength(1);
  });

  it("lists deliveries over Connect JSON too, and refuses an unknown delivery and a malformed id", async () => {
    const { deliveries } = await webhooksJson.listWebhookDeliveries({ webhookId: "crm", state: WebhookDeliveryState.DELIVERED });
    expect(deliveries.length).toBeGreaterThan(0);
    expect(deliveries.every((d) => d.webhookId === "crm" && d.state === WebhookDeliveryState.DELIVERED)).toBe(true);
    const missing = await webhooks.retryWebhookDelivery({ id: "msg_doesnotexist" }).catch((e: unknown) => ConnectError.from(e));
    expect((missing as ConnectError).code).toBe(Code.NotFound);
    const bad = await webhooks.retryWebhookDelivery({ id: "evt.1.2" }).catch((e: unknown) => ConnectError.from(e));
    expect((bad as ConnectError).code).toBe(Code.InvalidArgument);
  });

  it("puts no token, session id or webhook secret in any body, log line or metric", async () => {
    const metrics = await (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();
    const bodies = [...receiver.received, ...flaky.received].map((r) => JSON.stringify(r));
    const key = secret.slice("whsec_".length);
    expect(secrets.length).toBeGreaterThan(6);
    for (const text of [metrics, svc.logs.text(), ...bodies]) {
      for (const t of secrets) expect(text).not.toContain(t);
      expect(text).not.toContain(key);
      expect(text).not.toContain(Buffer.from(key, "base64").toString("hex"));
    }
    expect(metrics).toContain('token_service_webhook_dead_letters{webhook="crm"} 0');
  });
});

describe("webhooks: dead letters, the manual retry and the outbound policy", () => {
  let provider: TestProvider;
  let svc: TestService;
  let receiver: WebhookReceiver;
  let webhooks: Client<typeof WebhookService>;
  let secretFile: string;

  beforeAll(async () => {
    [provider, receiver] = await Promise.all([startTestProvider(), WebhookReceiver.start()]);
    const dir = mkdtempSync(join(tmpdir(), "webhook-secret-"));
    secretFile = join(dir, "s.secret");
    writeFileSync(secretFile, makeSecret());
    receiver.fallback = 500;
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        // Loopback over http is allowed, but private addresses are not: the "blocked" webhook is refused by the policy.
        outbound: { allow_insecure_http: true, allow_hosts: [`127.0.0.1:${receiver.port}`] },
        webhooks: {
          ...FAST,
          max_age_seconds: 2,
          endpoints: [
            { id: "down", url: receiver.url, events: ["session.created"], secret_file: secretFile },
            // Its path is a credential of the receiver's (as some chat services' webhook URLs are): never logged.
            { id: "blocked", url: `http://127.0.0.1:1/hooks/T0001/receiver-path-credential`, events: ["session.created"], secret_file: secretFile },
          ],
        },
      },
    });
    webhooks = createClient(WebhookService, createGrpcTransport({ baseUrl: svc.url }));
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([provider?.close(), receiver?.stop()]);
  });

  it("dead-letters a delivery after webhooks.max_age_seconds, lists it, and delivers it with the same webhook-id when retried by hand", async () => {
    await storeLoggedIn({ provider, secrets: [] }, svc.client, "wh-dead-user");
    const dead = await until(async () => {
      const { deliveries } = await webhooks.listWebhookDeliveries({ webhookId: "down", state: WebhookDeliveryState.DEAD });
      return deliveries[0];
    }, "a dead letter", 20_000);
    expect(dead.lastError).toBe("http_500");
    expect(dead.attempts).toBeGreaterThan(1);
    expect(dead.deadAt).toBeDefined();
    const attempts = receiver.received.filter((r) => r.headers["webhook-id"] === dead.id).length;
    expect(attempts).toBe(dead.attempts);
    // The policy refused the other webhook's address before connecting: dead too, with the reason.
    const blocked = await until(async () => (await webhooks.listWebhookDeliveries({ webhookId: "blocked", state: WebhookDeliveryState.DEAD })).deliveries[0], "the blocked dead letter", 20_000);
    expect(blocked.lastError).toBe("destination_not_allowed");
    expect(svc.logs.lines().some((l) => l.msg === "outbound request refused by the outbound policy" && l.provider === "webhook:blocked" && l.url === "http://127.0.0.1:1")).toBe(true);
    expect(svc.logs.text()).not.toContain("receiver-path-credential");
    const metrics = await until(async () => {
      const text = await (await fetch(`http://127.0.0.1:${svc.app.adminPort}/metrics`)).text();
      return /token_service_webhook_dead_letters\{webhook="down"\} 1/.test(text) ? text : undefined;
    }, "the dead-letter gauge", 15_000);
    expect(metrics).toMatch(/token_service_webhook_deliveries_total\{webhook="down",result="dead"\} 1/);

    // The docs' CLI commands, as written (the id replaced with this one's).
    const [cli] = blocks("sh");
    const commands = cli!.trim().split("\n");
    expect(commands[0]).toBe("npm run --silent cli -- webhooks deliveries --dead");
    const env = { ...process.env, DATABASE_URL: `sqlite:${join(svc.dir, "sessions.db")}`, TOKEN_SERVICE_CONFIG: join(svc.dir, "config.yaml"), TOKEN_SERVICE_ENCRYPTION_KEYS: svc.keys! };
    const run = async (command: string) => (await execFile("sh", ["-c", command], { cwd: ROOT, env })).stdout;
    const listed = await run(commands[0]!);
    expect(listed).toContain(dead.id);
    expect(listed).toMatch(/down\s+session\.created\s+dead/);
    receiver.fallback = 200;
    const retried = await run(commands[1]!.replace(/msg_\S+/, dead.id));
    expect(retried).toContain(`retrying ${dead.id}`);
    const delivered = await until(() => receiver.received.find((r) => r.headers["webhook-id"] === dead.id && receiver.received.indexOf(r) >= attempts), "the retried delivery");
    new Webhook(readFileSync(secretFile, "utf8").trim()).verify(delivered.body, delivered.headers as Record<string, string>);
    await until(async () => (await webhooks.listWebhookDeliveries({ webhookId: "down", state: WebhookDeliveryState.DELIVERED })).deliveries.find((d) => d.id === dead.id), "delivered state");

    // The RPC retries a dead letter too.
    const rpc = await webhooks.retryWebhookDelivery({ id: blocked.id });
    expect(rpc.delivery?.state).toBe(WebhookDeliveryState.PENDING);
  });
});

describe("WebhookService and callers' scopes", () => {
  let provider: TestProvider;
  let svc: TestService;
  let receiver: WebhookReceiver;
  const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
  const client = (bearer: string) =>
    createClient(
      WebhookService,
      createGrpcTransport({
        baseUrl: svc.url,
        interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${bearer}`), next(req))],
      }),
    );

  beforeAll(async () => {
    [provider, receiver] = await Promise.all([startTestProvider(), WebhookReceiver.start()]);
    const dir = mkdtempSync(join(tmpdir(), "webhook-secret-"));
    writeFileSync(join(dir, "s.secret"), makeSecret());
    svc = await startService({
      dialect: "sqlite",
      provider,
      yaml: {
        providers: [provider.configEntry(), provider.configEntry("other")],
        callers: [
          { name: "admin", token_sha256: sha256("admin-credential-0123456789"), rpcs: ["*"] },
          { name: "other-only", token_sha256: sha256("other-credential-0123456789"), rpcs: ["ListWebhookDeliveries", "RetryWebhookDelivery"], providers: ["other"] },
          { name: "store-only", token_sha256: sha256("store-credential-0123456789"), rpcs: ["StoreSession"] },
        ],
        outbound: { allow_private_networks: true, allow_insecure_http: true },
        webhooks: { ...FAST, endpoints: [{ id: "crm", url: receiver.url, events: ["*"], secret_file: join(dir, "s.secret") }] },
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([provider?.close(), receiver?.stop()]);
  });

  it("shows a caller only its providers' deliveries, and refuses callers without the RPCs", async () => {
    const set = await provider.login("wh-scope-user");
    const admin = createClient(
      TokenService,
      createGrpcTransport({ baseUrl: svc.url, interceptors: [(next) => (req) => (req.header.set("authorization", "Bearer admin-credential-0123456789"), next(req))] }),
    );
    await admin.storeSession({ userId: "wh-scope-user", provider: "corp", tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 3600n } });
    const mine = await until(async () => (await client("admin-credential-0123456789").listWebhookDeliveries({})).deliveries[0], "the delivery");
    expect(mine.provider).toBe("corp");
    expect((await client("other-credential-0123456789").listWebhookDeliveries({})).deliveries).toEqual([]);
    const hidden = await client("other-credential-0123456789").retryWebhookDelivery({ id: mine.id }).catch((e: unknown) => ConnectError.from(e));
    expect((hidden as ConnectError).code).toBe(Code.NotFound);
    const refused = await client("store-credential-0123456789").listWebhookDeliveries({}).catch((e: unknown) => ConnectError.from(e));
    expect((refused as ConnectError).code).toBe(Code.PermissionDenied);
    expect((await client("admin-credential-0123456789").retryWebhookDelivery({ id: mine.id })).delivery?.id).toBe(mine.id);
  });
});

describe("a webhook added by a reload (one service, SQLite)", () => {
  let provider: TestProvider;
  let svc: TestService;
  let first: WebhookReceiver;
  let late: WebhookReceiver;
  let dir: string;
  const secrets: string[] = [];
  // Turns come only when an event wakes the dispatcher (or a minute later): the first turn after the reload is the
  // one the test's own event starts, so the new webhook's cursor is set by a turn that runs after that event.
  const SLOW = { ...FAST, interval_seconds: 60 };
  const yaml = (withLate: boolean) => ({
    outbound: { allow_private_networks: true, allow_insecure_http: true },
    webhooks: {
      ...SLOW,
      endpoints: [
        { id: "first", url: first.url, events: ["*"], secret_file: join(dir, "s.secret") },
        ...(withLate ? [{ id: "late", url: late.url, events: ["session.created"], secret_file: join(dir, "s.secret") }] : []),
      ],
    },
  });

  beforeAll(async () => {
    [provider, first, late] = await Promise.all([startTestProvider(), WebhookReceiver.start(), WebhookReceiver.start()]);
    dir = mkdtempSync(join(tmpdir(), "webhook-late-"));
    writeFileSync(join(dir, "s.secret"), `whsec_${Buffer.alloc(32, 3).toString("base64")}\n`);
    // App.reload() reads the YAML file again, as start-up did.
    svc = await startService({ dialect: "sqlite", provider, yaml: yaml(false), overrides: { loadConfig: () => loadConfig(svc.env) } });
  });
  afterAll(async () => {
    await svc?.close();
    await Promise.all([provider?.close(), first?.stop(), late?.stop()]);
  });

  it("gets the events made after the reload, even when the turn that starts its cursor comes after them", async () => {
    await storeLoggedIn({ provider, secrets }, svc.client, "wh-late-before");
    await until(() => first.received.find((r) => r.body.includes("wh-late-before")), "the first webhook's delivery");
    const file = String(svc.env.TOKEN_SERVICE_CONFIG);
    writeFileSync(file, stringify({ ...(parse(readFileSync(file, "utf8")) as Record<string, unknown>), ...yaml(true) }));
    // The file watch may have applied it already; either way it is applied when reload() returns.
    expect((await svc.app.reload()).ok).toBe(true);
    expect(svc.app.config.webhooks.endpoints.map((e) => e.id)).toEqual(["first", "late"]);
    await storeLoggedIn({ provider, secrets }, svc.client, "wh-late-after");
    const got = await until(() => late.received.find((r) => r.body.includes("wh-late-after")), "the new webhook's delivery of the event after the reload");
    expect((JSON.parse(got.body) as { type: string }).type).toBe("session.created");
    // Only events from the reload on: the session stored before it is not sent to the new webhook.
    expect(late.received.filter((r) => r.body.includes("wh-late-before"))).toEqual([]);
  });
});
