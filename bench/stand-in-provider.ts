import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";

/** What the stand-in saw, for the background-refresh benchmark. */
export interface StandInStats {
  /** Refresh-grant requests answered with new tokens. */
  refreshes: number;
  /** Requests with a refresh token already rotated away (a second call for one token): answered invalid_grant. */
  reused: number;
  /** Seconds the replaced access token still had when its refresh arrived (negative: it had expired). */
  leadSeconds: number[];
  /** Most refresh requests in flight at once, and the in-flight count integrated over time (ms), for the mean. */
  maxConcurrent: number;
  concurrentMs: number;
}

export interface StandInProvider {
  readonly issuer: string;
  readonly stats: StandInStats;
  /** Registers a session's first tokens: `rt.<i>.0`, whose access token expires at `accessExpiresAt`. */
  seed(session: number, accessExpiresAt: number): void;
  /** Sessions whose current access token expired before `at` (epoch ms). */
  expiredBefore(at: number): number;
  /** Clears the counters (the sessions' tokens stay). */
  resetStats(): void;
  close(): Promise<void>;
}

/**
 * A token endpoint standing in for a provider: it answers each refresh-token
 * grant after `latencyMs`, rotating the refresh token and issuing an access
 * token of `lifetimeSeconds`, and records how long before expiry each token
 * was refreshed. It does no cryptography, so it costs the machine next to
 * nothing (oidc-provider would take a core of its own at these rates).
 */
export async function startStandInProvider(options: { latencyMs: number; lifetimeSeconds: number }): Promise<StandInProvider> {
  /** Per session: the generation of its live refresh token, and its access token's expiry (epoch ms). */
  const gen = new Map<number, number>();
  const expires = new Map<number, number>();
  const stats: StandInStats = { refreshes: 0, reused: 0, leadSeconds: [], maxConcurrent: 0, concurrentMs: 0 };
  let inflight = 0;
  let since = performance.now();
  const account = () => {
    const now = performance.now();
    stats.concurrentMs += inflight * (now - since);
    since = now;
  };

  const server = http.createServer((req, res) => {
    if (req.method === "GET" && req.url === "/.well-known/openid-configuration") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ issuer, token_endpoint: `${issuer}/token`, authorization_endpoint: `${issuer}/authorize`, response_types_supported: ["code"] }));
      return;
    }
    if (req.method !== "POST" || req.url !== "/token") {
      res.statusCode = 404;
      res.end();
      return;
    }
    let body = "";
    req.setEncoding("utf8").on("data", (d: string) => (body += d));
    req.on("end", () => {
      account();
      inflight++;
      stats.maxConcurrent = Math.max(stats.maxConcurrent, inflight);
      setTimeout(() => {
        account();
        inflight--;
        const m = /^rt\.(\d+)\.(\d+)$/.exec(new URLSearchParams(body).get("refresh_token") ?? "");
        const session = Number(m?.[1]);
        const g = Number(m?.[2]);
        res.setHeader("content-type", "application/json");
        if (!m || gen.get(session) !== g) {
          stats.reused++;
          res.statusCode = 400;
          res.end(JSON.stringify({ error: "invalid_grant" }));
          return;
        }
        const now = Date.now();
        stats.refreshes++;
        stats.leadSeconds.push((expires.get(session)! - now) / 1000);
        gen.set(session, g + 1);
        expires.set(session, now + options.lifetimeSeconds * 1000);
        res.end(
          JSON.stringify({
            access_token: `at.${session}.${g + 1}.${"a".repeat(600)}`,
            refresh_token: `rt.${session}.${g + 1}`,
            token_type: "Bearer",
            expires_in: options.lifetimeSeconds,
          }),
        );
      }, options.latencyMs);
    });
  });
  server.keepAliveTimeout = 60_000;
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    issuer,
    stats,
    seed(session, accessExpiresAt) {
      gen.set(session, 0);
      expires.set(session, accessExpiresAt);
    },
    expiredBefore(at) {
      let n = 0;
      for (const e of expires.values()) if (e < at) n++;
      return n;
    },
    resetStats() {
      account();
      Object.assign(stats, { refreshes: 0, reused: 0, leadSeconds: [], maxConcurrent: inflight, concurrentMs: 0 });
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, "close");
    },
  };
}
