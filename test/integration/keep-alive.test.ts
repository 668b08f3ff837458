import { Code, ConnectError } from "@connectrpc/connect";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { setTimeout as sleep } from "node:timers/promises";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { SessionRepository } from "../../src/db/session-repository.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type Dialect, type TestService } from "../helpers/service.js";

/**
 * Refresh tokens that die of disuse: with rotation, each refresh token the
 * provider issues lives IDLE_S, so a session nobody refreshes for that long
 * is dead at the provider. Access tokens live ACCESS_S (longer than the idle
 * period, and sessions count as used for 1 s only), so the refreshes that
 * keep a session alive are the keep-alive ones, and GetToken after ACCESS_S
 * needs a refresh: it works only when the refresh token is still alive.
 */
const IDLE_S = 5;
const ACCESS_S = 7;

/** Background refresh on, scanning every 0.2 s; a session counts as used for 1 s after its last read. */
function refreshYaml(keepAliveSeconds: number) {
  return {
    refresh: {
      keep_alive_seconds: keepAliveSeconds,
      // Room for a provider in this process that a loaded machine slows down: a failed refresh waits 10 s.
      lease_seconds: 10,
      provider_timeout_seconds: 5,
      background: { interval_seconds: 0.2, recent_window_seconds: 1 },
    },
  };
}

describe.each<Dialect>(["sqlite", "postgresql"])("keep-alive refresh on %s", (dialect) => {
  let idle: TestProvider;
  let reporting: TestProvider;
  let kept: TestService;
  let off: TestService;
  let expiry: TestService;

  const database = async () => (dialect === "postgresql" ? createTestDatabase(inject("postgresUrl")) : undefined);

  beforeAll(async () => {
    idle = await startTestProvider({ accessTokenTtl: ACCESS_S, refreshTokenTtl: IDLE_S });
    reporting = await startTestProvider({ accessTokenTtl: ACCESS_S, refreshTokenTtl: IDLE_S, reportRefreshTokenExpiry: true });
    kept = await startService({ dialect, databaseUrl: await database(), provider: idle, yaml: refreshYaml(1) });
    off = await startService({ dialect, databaseUrl: await database(), provider: idle, yaml: refreshYaml(0) });
    // Keep-alive far longer than the idle period: only the refresh token's stated expiry can save a session.
    expiry = await startService({ dialect, databaseUrl: await database(), provider: reporting, yaml: refreshYaml(3600) });
  });
  afterAll(async () => {
    await Promise.all([kept?.close(), off?.close(), expiry?.close()]);
    await Promise.all([idle?.close(), reporting?.close()]);
  });

  /** Logs `user` in at `provider` and stores the session in `svc`, with the refresh token's expiry when `withExpiry`. */
  async function store(svc: TestService, provider: TestProvider, user: string, withExpiry = false) {
    const t = await provider.login(user);
    const { sessionId } = await svc.client.storeSession({
      userId: user,
      provider: "corp",
      tokens: {
        accessToken: t.access_token,
        refreshToken: t.refresh_token,
        expiresIn: BigInt(t.expires_in),
        ...(withExpiry ? { refreshExpiresAt: timestampFromDate(new Date(Date.now() + IDLE_S * 1000)) } : {}),
      },
    });
    return { user, sessionId, accessToken: t.access_token };
  }

  /** The outcome of GetToken: a new access token, or the error code and reason. */
  async function getToken(svc: TestService, s: { user: string; sessionId: string }) {
    try {
      return { token: (await svc.client.getToken({ userId: s.user, sessionId: s.sessionId })).token };
    } catch (err) {
      if (!(err instanceof ConnectError)) throw err;
      return { code: err.code };
    }
  }

  it("keeps untouched sessions, and one used once, alive past the provider's idle timeout; without keep-alive they die", async () => {
    const since = Date.now();
    const untouched = await store(kept, idle, "untouched");
    const usedOnce = await store(kept, idle, "used-once");
    expect((await getToken(kept, usedOnce)).token).toBe(usedOnce.accessToken);
    const control = await store(off, idle, "control");
    // Past the idle period and the access tokens' lifetime: GetToken must refresh with the refresh token stored.
    await sleep(since + (ACCESS_S + 1) * 1000 - Date.now());

    for (const s of [untouched, usedOnce]) {
      const got = await getToken(kept, s);
      expect(got.code).toBeUndefined();
      expect(got.token).not.toBe(s.accessToken);
    }
    // Several keep-alive refreshes per session (every 0.7 to 0.95 s), none refused.
    expect(idle.stats.refreshes).toBeGreaterThanOrEqual(ACCESS_S);
    expect(idle.stats.invalidGrants).toBe(0);
    // The control: no refresh at all while it idled, so its refresh token died at the provider.
    expect(await getToken(off, control)).toEqual({ code: Code.FailedPrecondition });
    expect(idle.stats.invalidGrants).toBe(1);
  });

  it("refreshes ahead of refresh_token_expires_in, even with keep-alive far off", async () => {
    const since = Date.now();
    const known = await store(expiry, reporting, "known-expiry", true);
    const unknown = await store(expiry, reporting, "unknown-expiry");
    await sleep(since + (ACCESS_S + 1) * 1000 - Date.now());

    const got = await getToken(expiry, known);
    expect(got.code).toBeUndefined();
    expect(got.token).not.toBe(known.accessToken);
    // Stored without its refresh token's expiry, nothing made it due: it died after the idle period.
    expect(await getToken(expiry, unknown)).toEqual({ code: Code.FailedPrecondition });
    // Its row holds the expiry the provider stated with the last refresh token.
    const row = await new SessionRepository(expiry.app.orm, dialect).findById(known.sessionId);
    expect(row!.refreshExpiresAt!.getTime()).toBeGreaterThan(Date.now());
  });
});
