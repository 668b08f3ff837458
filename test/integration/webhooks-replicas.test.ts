import { mkdtempSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Webhook } from "standardwebhooks";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { connectGrpcClient, type ConnectTokenClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { queryOnce } from "../helpers/postgres.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";
import { createTestDatabase } from "../helpers/service.js";
import { storeLoggedIn, until, WebhookReceiver } from "../helpers/webhook-receiver.js";

interface Replica {
  proc: ServiceProcess;
  client: ConnectTokenClient;
}

/**
 * Webhooks from three service processes on one PostgreSQL: a receiver that
 * is down for a while gets every delivery once it is back, a kill -9 of the
 * replica in the middle of an attempt loses nothing (the repeat carries the
 * same webhook-id), a reload adds a webhook on every replica, and no secret
 * reaches a body or a log line.
 */
describe("webhooks from three replicas on one PostgreSQL", () => {
  let provider: TestProvider;
  let receiver: WebhookReceiver;
  let ops: WebhookReceiver;
  let databaseUrl: string;
  let env: Record<string, string>;
  let dir: string;
  let configFile: string;
  let secret: string;
  const replicas: Replica[] = [];
  const killed: ServiceProcess[] = [];
  /** Tokens and session ids of the sessions stored: never in a body or a log line. */
  const secrets: string[] = [];

  const query = (sql: string, params: unknown[] = []) => queryOnce(databaseUrl, sql, params);

  const store = (user: string, via: number) => storeLoggedIn({ provider, secrets }, replicas[via % replicas.length]!.client, user);

  /** The requests the receiver got for a user's session.created, verified. */
  function createdFor(r: WebhookReceiver, user: string) {
    return r.received.filter((x) => x.body.includes(`"user_id":"${user}"`) && x.body.includes('"type":"session.created"'));
  }

  function config(withOps: boolean) {
    return stringify({
      providers: [provider.configEntry()],
      refresh: { background: { enabled: false } },
      outbound: { allow_private_networks: true, allow_insecure_http: true },
      shutdown_grace_seconds: 1,
      webhooks: {
        interval_seconds: 0.2,
        // An attempt may take up to 4 s; a killed replica's lease lapses 6 s after it was taken.
        timeout_seconds: 4,
        lease_seconds: 6,
        retry_base_delay_seconds: 0.2,
        retry_max_delay_seconds: 1,
        endpoints: [
          { id: "crm", url: receiver.url, events: ["session.created", "session.revoked"], secret_file: "crm.secret" },
          ...(withOps ? [{ id: "ops", url: ops.url, events: ["session.revoked"], secret_file: "crm.secret" }] : []),
        ],
      },
    });
  }

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "token-service-webhooks-"));
    [provider, receiver, ops] = await Promise.all([startTestProvider(), WebhookReceiver.start(), WebhookReceiver.start()]);
    databaseUrl = await createTestDatabase(inject("postgresUrl"));
    secret = `whsec_${Buffer.from(Array.from({ length: 32 }, (_, i) => (i * 37 + 11) % 256)).toString("base64")}`;
    writeFileSync(join(dir, "crm.secret"), `${secret}\n`);
    configFile = join(dir, "config.yaml");
    writeFileSync(configFile, config(false));
    env = { DATABASE_URL: databaseUrl, TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("webhooks"), TOKEN_SERVICE_CONFIG: configFile };
    const procs = await Promise.all([spawnService(env), spawnService(env), spawnService(env)]);
    replicas.push(...procs.map((proc) => ({ proc, client: connectGrpcClient(proc.url) })));
  }, 120_000);

  afterAll(async () => {
    for (const r of replicas) r.proc.kill("SIGKILL");
    await Promise.all([provider?.close(), receiver?.stop(), ops?.stop()]);
    rmSync(dir, { recursive: true, force: true });
  });

  it("delivers every event, made on any replica, to a receiver that was down for a while once it is back", async () => {
    await receiver.stop();
    const users = Array.from({ length: 6 }, (_, i) => `wh-down-${i}`);
    for (const [i, user] of users.entries()) await store(user, i);
    // Each has been tried and failed at least once while the receiver was down.
    await until(async () => {
      const rows = await query(`select count(*)::int as n from webhook_deliveries where webhook_id = 'crm' and event_type = 'session.created' and attempts > 0 and last_error = 'connection' and state = 'pending'`);
      return Number(rows[0]!.n) === users.length;
    }, "failed attempts for every delivery");
    const before = receiver.received.length;
    await receiver.restart();
    await until(() => users.every((u) => createdFor(receiver, u).length > 0), "every delivery after the receiver came back");
    for (const user of users) {
      const got = createdFor(receiver, user);
      // At least once: a repeat is only ever the same delivery (the same webhook-id and body).
      expect(new Set(got.map((g) => g.headers["webhook-id"])).size).toBe(1);
      for (const g of got) new Webhook(secret).verify(g.body, g.headers as Record<string, string>);
    }
    expect(receiver.received.length - before).toBeGreaterThanOrEqual(users.length);
    // The answer came; the replica records it right after.
    await until(async () => {
      const rows = await query(`select state, count(*)::int as n from webhook_deliveries where event_type = 'session.created' and webhook_id = 'crm' group by state`);
      return rows.length === 1 && rows[0]!.state === "delivered" && rows[0]!.n === users.length;
    }, "every delivery recorded as delivered", 10_000);
  }, 120_000);

  it("loses nothing when the replica delivering is killed with SIGKILL mid-attempt; the repeat has the same webhook-id", async () => {
    receiver.answers.push("hang");
    const before = receiver.received.length;
    await store("wh-kill-0", 0);
    const hung = await until(() => receiver.received.slice(before).find((r) => r.body.includes('"user_id":"wh-kill-0"')), "the hanging attempt");
    const id = String(hung.headers["webhook-id"]);
    const [row] = await query(`select lease_owner from webhook_deliveries where id = $1`, [id]);
    const pid = Number(String(row!.lease_owner).split("-")[0]);
    const victim = replicas.findIndex((r) => r.proc.child.pid === pid);
    expect(victim).toBeGreaterThanOrEqual(0);
    replicas[victim]!.proc.kill("SIGKILL");
    killed.push(replicas[victim]!.proc);
    await replicas[victim]!.proc.exited;
    replicas.splice(victim, 1);
    // More events while the lease of the dead replica is still live: all of them arrive too.
    for (let i = 1; i <= 3; i++) await store(`wh-kill-${i}`, i);
    await until(() => [0, 1, 2, 3].every((i) => createdFor(receiver, `wh-kill-${i}`).length > (i === 0 ? 1 : 0)), "every delivery, the killed one again");
    const again = createdFor(receiver, "wh-kill-0");
    expect(new Set(again.map((g) => g.headers["webhook-id"]))).toEqual(new Set([id]));
    expect(new Set(again.map((g) => g.body)).size).toBe(1);
    // Under the lease, no other replica sent it while the killed one held it: the hung attempt, then one after the lease lapsed.
    expect(again).toHaveLength(2);
    const done = await until(async () => {
      const [r] = await query(`select state, attempts, lease_owner from webhook_deliveries where id = $1`, [id]);
      return r?.state === "delivered" ? r : undefined;
    }, "the killed delivery recorded as delivered", 10_000);
    expect(done.lease_owner).toBeNull();
    // Only the replica that delivered it recorded an attempt: the killed one never did.
    expect(done.attempts).toBe(1);
    for (let i = 1; i <= 3; i++) expect(new Set(createdFor(receiver, `wh-kill-${i}`).map((g) => g.headers["webhook-id"])).size).toBe(1);
  }, 120_000);

  it("applies a webhook added by a reload on every replica, from then on", async () => {
    const marks = replicas.map((r) => r.proc.lines().length);
    // Written whole (a rename), then SIGHUP: whichever of the file watch and the signal comes first reloads.
    writeFileSync(`${configFile}.new`, config(true));
    renameSync(`${configFile}.new`, configFile);
    for (const r of replicas) r.proc.kill("SIGHUP");
    await until(
      () => replicas.every((r, i) => r.proc.lines().slice(marks[i]).some((l) => l.msg === "configuration reloaded" && JSON.stringify(l.webhooks ?? "").includes("ops"))),
      "every replica reloaded",
    );
    const sessionId = await store("wh-reload", 1);
    await replicas[0]!.client.revokeSession({ userId: "wh-reload", sessionId });
    const got = await until(() => ops.received.find((r) => r.body.includes('"user_id":"wh-reload"')), "the revoked event at the new webhook");
    const event = new Webhook(secret).verify(got.body, got.headers as Record<string, string>) as { type: string };
    expect(event.type).toBe("session.revoked");
    // It takes only the kinds it names, and only events made after it was added.
    expect(ops.events().every((e) => e.type === "session.revoked")).toBe(true);
    expect(ops.received.filter((r) => r.body.includes("wh-down-"))).toEqual([]);
  }, 120_000);

  it("fanned every event of crm's kinds out exactly once, whichever replica read it", async () => {
    const read = async () => ({
      events: (await query(`select e.seq::text as seq from events e where e.kind in ('session.created', 'session.revoked') order by e.seq`)).map((e) => e.seq),
      deliveries: (await query(`select event_id from webhook_deliveries where webhook_id = 'crm' order by event_id::bigint`)).map((d) => d.event_id),
    });
    // The last test's events may still be on their way out (a busy machine): wait until the fan-out has caught up.
    let seen = await read();
    const deadline = Date.now() + 15_000;
    while (seen.deliveries.length < seen.events.length && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      seen = await read();
    }
    expect(seen.events.length).toBeGreaterThanOrEqual(11);
    expect(seen.deliveries).toEqual(seen.events);
  });

  it("writes no token, session id or webhook secret in any body or log line of any replica", () => {
    const key = secret.slice("whsec_".length);
    const texts = [...replicas.map((r) => r.proc.stdout() + r.proc.stderr()), ...killed.map((p) => p.stdout() + p.stderr()), ...[...receiver.received, ...ops.received].map((r) => JSON.stringify(r))];
    expect(texts.join("")).toContain("webhook");
    for (const text of texts) {
      for (const t of secrets) expect(text).not.toContain(t);
      expect(text).not.toContain(key);
    }
  });
});
