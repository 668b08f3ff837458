import { readFileSync, readdirSync } from "node:fs";
import { join } from "node:path";
import pg from "pg";
import { Code, ConnectError } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, inject, it } from "vitest";
import { TokenKind } from "../../gen/tokenservice/v1/token_service_pb.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { createTestDatabase, startService, type Dialect, type TestService } from "../helpers/service.js";

/** Every secret a run produced: tokens before and after refresh, the client secret, the key. */
function secretsOf(values: Iterable<string>): string[] {
  return [...new Set([...values].filter((v) => v.length >= 16))];
}

describe.each<Dialect>(["sqlite", "postgresql"])("no secret in clear at rest or in logs (%s)", (dialect) => {
  let provider: TestProvider;
  let svc: TestService;
  let databaseUrl: string | undefined;
  const seen = new Set<string>();
  const sessionIds: string[] = [];

  beforeAll(async () => {
    provider = await startTestProvider();
    databaseUrl = dialect === "postgresql" ? await createTestDatabase(inject("postgresUrl")) : undefined;
    svc = await startService({ dialect, databaseUrl, provider });

    for (const user of ["ann", "ben", "cat"]) {
      const tokens = await provider.login(user);
      [tokens.access_token, tokens.refresh_token, tokens.id_token].forEach((t) => seen.add(t));
      // Ben's calls go through the HTTP listener (Connect JSON), the others' through the gRPC one.
      const client = user === "ben" ? svc.jsonClient : svc.client;
      const { sessionId } = await client.storeSession({
        userId: user,
        provider: "corp",
        tokens: {
          accessToken: tokens.access_token,
          refreshToken: tokens.refresh_token,
          idToken: tokens.id_token,
          expiresIn: BigInt(tokens.expires_in),
        },
      });
      sessionIds.push(sessionId);
      // Refresh, so rotated tokens are written too; then read both kinds.
      const fresh = await client.getToken({ userId: user, sessionId, forceRefresh: true });
      seen.add(fresh.token);
      seen.add((await svc.grpcJs.call("GetToken", { user_id: user, session_id: sessionId, kind: "TOKEN_KIND_ID" })).token as string);
    }
    // A failing call and a revocation also write log lines.
    await svc.client.getToken({ userId: "ann", sessionId: "B".repeat(43) }).catch(() => undefined);
    await svc.jsonClient.getToken({ userId: "ann", sessionId: "C".repeat(43) }).catch(() => undefined);
    await svc.client.revokeSession({ userId: "cat", sessionId: sessionIds[2]! });
    // The rotated refresh tokens, as the provider issued them, are only in the database: fetch them
    // back through the provider's view is impossible, so also check that no refresh token of any
    // form (oidc-provider's are 43+ chars of base64url) appears next to our known ones below.
    seen.add(provider.clientSecret);
    seen.add(svc.keys!.split(":")[1]!);
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  it("keeps tokens only as ciphertext in the database", async () => {
    const secrets = secretsOf(seen);
    expect(secrets.length).toBeGreaterThanOrEqual(10);
    let haystack: Buffer;
    if (dialect === "sqlite") {
      const files = readdirSync(svc.dir).filter((f) => f.startsWith("sessions.db"));
      expect(files).toContain("sessions.db");
      haystack = Buffer.concat(files.map((f) => readFileSync(join(svc.dir, f))));
    } else {
      const client = new pg.Client({ connectionString: databaseUrl });
      await client.connect();
      try {
        const { rows } = await client.query("select * from sessions");
        expect(rows.length).toBe(2);
        const parts: Buffer[] = [];
        for (const row of rows) {
          for (const v of Object.values(row)) parts.push(Buffer.isBuffer(v) ? v : Buffer.from(String(v)));
        }
        // And the raw text form, as a dump would show it.
        const text = await client.query("select t::text as t from sessions t");
        for (const r of text.rows) parts.push(Buffer.from(String(r.t)));
        haystack = Buffer.concat(parts);
      } finally {
        await client.end();
      }
    }
    for (const secret of secrets) {
      expect(haystack.includes(Buffer.from(secret)), `secret of length ${secret.length} found at rest`).toBe(false);
    }
    // What stays queryable: user ids and the provider.
    expect(haystack.includes(Buffer.from("ann"))).toBe(true);
  });

  it("never writes a token, the client secret, the key or a full session id to the logs", () => {
    const text = svc.logs.text();
    expect(text).toContain("session refreshed");
    expect(text).toContain("session stored");
    for (const secret of [...secretsOf(seen), ...sessionIds]) {
      expect(text.includes(secret), `secret of length ${secret.length} found in logs`).toBe(false);
    }
    for (const line of svc.logs.lines()) {
      if (line.sid !== undefined) expect(String(line.sid)).toMatch(/^[A-Za-z0-9_-]{12}$/);
    }
  });

  it("keeps error details free of tokens, on both listeners", async () => {
    for (const client of [svc.client, svc.jsonClient]) {
      const err = await client.getToken({ userId: "ann", sessionId: sessionIds[0]!, kind: 99 as TokenKind }).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConnectError);
      expect((err as ConnectError).code).toBe(Code.InvalidArgument);
      const serialized = JSON.stringify({ m: (err as ConnectError).message, d: (err as ConnectError).details });
      for (const secret of secretsOf(seen)) expect(serialized.includes(secret)).toBe(false);
    }
  });
});
