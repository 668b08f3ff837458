import { Client as PgClient } from "pg";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { SessionSchema } from "../../src/db/session-entity.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type TestService } from "../helpers/service.js";

/**
 * A back-channel logout whose session deletes fail (a real PostgreSQL
 * failure: the service's connection is terminated while it waits on a row
 * lock) answers 503 and records nothing, so the provider's retry with the
 * same logout token works; a replay after that success is still refused.
 */
describe("back-channel logout retried after a failed delete (PostgreSQL)", () => {
  let provider: TestProvider;
  let svc: TestService;
  let databaseUrl: string;

  beforeAll(async () => {
    provider = await startTestProvider();
    databaseUrl = await createTestDatabase(inject("postgresUrl"));
    svc = await startService({ dialect: "postgresql", databaseUrl, provider });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  const post = (token: string) =>
    fetch(`${svc.httpUrl}/oidc/backchannel-logout/corp`, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({ logout_token: token }),
    });
  const sessionsOf = (userId: string) => svc.app.orm.em.fork().count(SessionSchema, { userId });

  it("answers 503 when the delete fails, then accepts the provider's retry with the same token, then refuses a replay", async () => {
    for (let i = 0; i < 2; i++) {
      const login = await provider.login("ulla");
      await svc.client.storeSession({
        userId: "ulla",
        provider: "corp",
        tokens: { accessToken: login.access_token, refreshToken: login.refresh_token, idToken: login.id_token, expiresIn: 300n },
      });
    }
    expect(await sessionsOf("ulla")).toBe(2);
    const token = await provider.logoutToken(provider.clientId, { sub: "ulla" });

    const locker = new PgClient({ connectionString: databaseUrl });
    await locker.connect();
    try {
      await locker.query("begin");
      await locker.query("select id from sessions where user_id = 'ulla' for update");
      const pending = post(token);
      // The service's delete now waits on the lock; its connection is then cut, a real failure mid-transaction.
      let terminated = 0;
      for (let i = 0; i < 200 && terminated === 0; i++) {
        const { rows } = await locker.query<{ pid: number }>(
          "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid() and wait_event_type = 'Lock'",
        );
        for (const r of rows) await locker.query("select pg_terminate_backend($1)", [r.pid]);
        terminated = rows.length;
        if (terminated === 0) await new Promise((r) => setTimeout(r, 25));
      }
      expect(terminated).toBeGreaterThan(0);
      const failed = await pending;
      expect(failed.status).toBe(503);
      expect(await failed.json()).toEqual({ error: "temporarily_unavailable" });
    } finally {
      await locker.query("rollback").catch(() => undefined);
      await locker.end();
    }
    expect(await sessionsOf("ulla")).toBe(2);

    const retried = await post(token);
    expect(retried.status).toBe(200);
    expect(await sessionsOf("ulla")).toBe(0);
    const audit = svc.logs.lines().filter((l) => l.event === "backchannel_logout" && l.userId === "ulla");
    expect(audit).toHaveLength(2);

    const replay = await post(token);
    expect(replay.status).toBe(400);
    expect(((await replay.json()) as { error_description: string }).error_description).toBe("replayed_jti");
    const lines = svc.logs.lines().filter((l) => l.backchannelLogout === true);
    expect(lines.map((l) => l.status)).toEqual([503, 200, 400]);
    expect(svc.logs.text()).not.toContain(token);
  });
});
