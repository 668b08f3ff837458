import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { exportJWK, generateKeyPair, SignJWT } from "jose";
import { createServer, type AddressInfo } from "node:net";
import { Code } from "@connectrpc/connect";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { UserAssertionUnavailableError, UserNotBoundError } from "../../src/sessions/errors.js";
import { toRpcStatus } from "../../src/rpc/errors.js";
import { SESSION_ID_BINDING, UserAssertionVerifier } from "../../src/rpc/user-binding.js";

const dir = mkdtempSync(join(tmpdir(), "token-service-user-assertion-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

async function refusal(p: Promise<unknown>): Promise<string> {
  const err = await p.then(() => undefined, (e: unknown) => e);
  expect(err).toBeInstanceOf(UserNotBoundError);
  return (err as UserNotBoundError).why;
}

describe("user assertions from a jwks_file, with another claim", () => {
  it("accepts an assertion whose claim is the user, and refuses one for another user or without the claim", async () => {
    const { publicKey, privateKey } = await generateKeyPair("RS256");
    writeFileSync(join(dir, "jwks.json"), JSON.stringify({ keys: [{ ...(await exportJWK(publicKey)), kid: "k", alg: "RS256" }] }));
    writeFileSync(
      join(dir, "config.yaml"),
      "user_assertion: { issuer: https://users.example.test, jwks_file: jwks.json, audience: ts, claim: email }\n",
    );
    const config = loadConfig({ TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"), DATABASE_URL: `sqlite:${join(dir, "db")}` }, dir);
    const verifier = new UserAssertionVerifier(config.userAssertion!);
    const sign = (claims: Record<string, unknown>) =>
      new SignJWT(claims).setProtectedHeader({ alg: "RS256", kid: "k" }).setIssuer("https://users.example.test").setAudience("ts").setExpirationTime("1m").sign(privateKey);
    await expect(verifier.verify(await sign({ email: "ada@example.test" }), "ada@example.test")).resolves.toBeUndefined();
    expect(await refusal(verifier.verify(await sign({ email: "bob@example.test" }), "ada@example.test"))).toBe("assertion_for_another_user");
    expect(await refusal(verifier.verify(await sign({ sub: "ada@example.test" }), "ada@example.test"))).toBe("assertion_email_invalid");
    expect(await refusal(verifier.verify(undefined, "ada@example.test"))).toBe("no_assertion");
  });

  it("session_id binding: a session id, or a new session, but no lookup and nothing user-wide", async () => {
    await expect(SESSION_ID_BINDING.check("u", "session")).resolves.toBeUndefined();
    await expect(SESSION_ID_BINDING.check("u", "new")).resolves.toBeUndefined();
    expect(await refusal(SESSION_ID_BINDING.check("u", "lookup"))).toBe("session_id_required");
    expect(await refusal(SESSION_ID_BINDING.check("u", "all_sessions"))).toBe("session_id_required");
  });
});

describe("user assertions while the issuer's key set cannot be fetched", () => {
  it("answers UNAVAILABLE (USER_ASSERTION_UNAVAILABLE), not a refusal of the caller", async () => {
    const closed = await new Promise<number>((resolve) => {
      const srv = createServer().listen(0, "127.0.0.1", () => {
        const { port } = srv.address() as AddressInfo;
        srv.close(() => resolve(port));
      });
    });
    const verifier = new UserAssertionVerifier({ issuer: "https://users.example.test", jwksUri: `http://127.0.0.1:${closed}/jwks`, jwks: undefined, audience: "ts", claim: "sub" });
    const { privateKey } = await generateKeyPair("ES256");
    const jwt = await new SignJWT({ sub: "ada" }).setProtectedHeader({ alg: "ES256", kid: "k" }).setIssuer("https://users.example.test").setAudience("ts").setExpirationTime("1m").sign(privateKey);
    const err = await verifier.verify(jwt, "ada").then(() => undefined, (e: unknown) => e);
    expect(err).toBeInstanceOf(UserAssertionUnavailableError);
    expect(toRpcStatus(err)).toMatchObject({ code: Code.Unavailable, reason: "USER_ASSERTION_UNAVAILABLE" });
  });
});
