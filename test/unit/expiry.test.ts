import { describe, expect, it } from "vitest";
import {
  accessTokenExpiry,
  idTokenExpiry,
  jwtClaims,
  lifetimeSeconds,
  refreshMarginSeconds,
  requiredValiditySeconds,
  secondsLeft,
} from "../../src/sessions/expiry.js";

/** An unsigned-looking JWT: base64url JSON header and payload, dummy signature. */
function jwt(payload: unknown): string {
  const enc = (v: unknown) => Buffer.from(JSON.stringify(v), "utf8").toString("base64url");
  return `${enc({ alg: "RS256", typ: "JWT" })}.${enc(payload)}.c2lnbmF0dXJl`;
}

const NOW = new Date("2026-01-15T12:00:00.000Z");
const nowSec = NOW.getTime() / 1000;
const at = (epochSeconds: number) => new Date(epochSeconds * 1000);

describe("jwtClaims", () => {
  it("reads the payload of a three-part JWT", () => {
    expect(jwtClaims(jwt({ sub: "u1", exp: 123, nested: { a: [1] } }))).toEqual({ sub: "u1", exp: 123, nested: { a: [1] } });
  });

  it("reads multi-byte UTF-8 claims", () => {
    expect(jwtClaims(jwt({ name: "Zoë 日本 🚀" }))?.name).toBe("Zoë 日本 🚀");
  });

  it.each([
    ["an opaque token", "opaque-access-token"],
    ["two parts", "aGVsbG8.d29ybGQ"],
    ["a five-part JWE", "a.b.c.d.e"],
    ["an empty payload", "aGVhZA..c2ln"],
    ["a non-JSON payload", `e30.${Buffer.from("not json").toString("base64url")}.sig`],
    ["a JSON array payload", jwt([1, 2, 3])],
    ["a JSON string payload", jwt("just a string")],
    ["a JSON null payload", jwt(null)],
    ["a JSON number payload", jwt(42)],
    ["the empty string", ""],
  ])("returns undefined for %s", (_label, token) => {
    expect(jwtClaims(token)).toBeUndefined();
  });
});

describe("accessTokenExpiry", () => {
  const base = { now: NOW, defaultLifetimeSeconds: 300 };

  it("prefers an explicit expires_at over expires_in and the JWT exp", () => {
    const expiresAt = new Date(NOW.getTime() + 900_000);
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ exp: nowSec + 60 }), expiresAt, expiresInSeconds: 120 });
    expect(r.source).toBe("expires_at");
    expect(r.expiresAt).toEqual(expiresAt);
    expect(r.issuedAt).toEqual(NOW);
  });

  it("prefers expires_in over the JWT exp, counted from now", () => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ exp: nowSec + 60, iat: nowSec - 30 }), expiresInSeconds: 120 });
    expect(r.source).toBe("expires_in");
    expect(r.expiresAt).toEqual(new Date(NOW.getTime() + 120_000));
    expect(r.issuedAt).toEqual(NOW);
  });

  it("uses the JWT exp when there is no expires_at or expires_in", () => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ exp: nowSec + 600 }) });
    expect(r).toEqual({ expiresAt: at(nowSec + 600), issuedAt: NOW, source: "jwt_exp" });
  });

  it("falls back to the default lifetime for an opaque token", () => {
    const r = accessTokenExpiry({ ...base, accessToken: "opaque", defaultLifetimeSeconds: 3600 });
    expect(r).toEqual({ expiresAt: new Date(NOW.getTime() + 3_600_000), issuedAt: NOW, source: "default" });
  });

  it.each([0, -5, Number.NaN])("ignores expires_in of %s and moves on to the JWT exp", (expiresInSeconds) => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ exp: nowSec + 600 }), expiresInSeconds });
    expect(r.source).toBe("jwt_exp");
    expect(r.expiresAt).toEqual(at(nowSec + 600));
  });

  it.each([
    ["a string exp", "1700000000"],
    ["a zero exp", 0],
    ["a negative exp", -1],
    ["an exp in milliseconds", (nowSec + 600) * 1000],
    ["a null exp", null],
  ])("ignores %s and uses the default", (_label, exp) => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ exp }) });
    expect(r.source).toBe("default");
    expect(r.expiresAt).toEqual(new Date(NOW.getTime() + 300_000));
  });

  it("takes a plausible JWT iat as the issue time", () => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ iat: nowSec - 100, exp: nowSec + 200 }) });
    expect(r.issuedAt).toEqual(at(nowSec - 100));
    expect(lifetimeSeconds(r.issuedAt, r.expiresAt)).toBe(300);
  });

  it("takes a plausible JWT iat with an explicit expires_at", () => {
    const expiresAt = at(nowSec + 200);
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ iat: nowSec - 100 }), expiresAt });
    expect(r.issuedAt).toEqual(at(nowSec - 100));
  });

  it("accepts an iat exactly at now", () => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ iat: nowSec, exp: nowSec + 60 }) });
    expect(r.issuedAt).toEqual(NOW);
  });

  it.each([
    ["an iat in the future", nowSec + 10],
    ["an iat at the exp", nowSec + 200],
    ["an iat after the exp", nowSec + 500],
    ["a string iat", String(nowSec - 100)],
    ["an iat in milliseconds", (nowSec - 100) * 1000],
  ])("replaces %s with now", (_label, iat) => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ iat, exp: nowSec + 200 }) });
    expect(r.source).toBe("jwt_exp");
    expect(r.issuedAt).toEqual(NOW);
  });

  // BUG (reported): expires_in from a provider's refresh response is not bounded
  // (coordinator.ts passes it straight in), and 1e20 s yields an Invalid Date.
  it("never returns an invalid date for an absurd expires_in", () => {
    const r = accessTokenExpiry({ ...base, accessToken: "opaque", expiresInSeconds: 1e20 });
    expect(Number.isFinite(r.expiresAt.getTime())).toBe(true);
  });

  it("does not invent a lifetime for an already expired JWT", () => {
    const r = accessTokenExpiry({ ...base, accessToken: jwt({ iat: nowSec - 600, exp: nowSec - 300 }) });
    expect(r.expiresAt).toEqual(at(nowSec - 300));
    expect(r.issuedAt).toEqual(at(nowSec - 600));
    expect(secondsLeft(r.expiresAt, NOW)).toBe(-300);
  });
});

describe("idTokenExpiry", () => {
  it("returns the exp of a JWT", () => {
    expect(idTokenExpiry(jwt({ sub: "u", exp: nowSec + 3600 }))).toEqual(at(nowSec + 3600));
  });

  it.each([
    ["an opaque string", "not-a-jwt"],
    ["a JWT without exp", jwt({ sub: "u" })],
    ["a JWT with a non-numeric exp", jwt({ exp: "soon" })],
    ["a JWT with an exp in milliseconds", jwt({ exp: (nowSec + 3600) * 1000 })],
  ])("returns undefined for %s", (_label, token) => {
    expect(idTokenExpiry(token)).toBeUndefined();
  });
});

describe("refreshMarginSeconds", () => {
  it.each([
    [60, 300, 60],
    [60, 60, 30],
    [60, 20, 10],
    [60, 21, 10],
    [300, 300, 150],
    [0, 300, 0],
    [60, 0, 0],
    [60, 1, 0],
    [60, 3600, 60],
  ])("margin %i s on a %i s token is %i s", (configured, lifetime, expected) => {
    expect(refreshMarginSeconds(configured, lifetime)).toBe(expected);
  });

  it("never goes negative", () => {
    expect(refreshMarginSeconds(-10, 300)).toBe(0);
    expect(refreshMarginSeconds(60, -300)).toBe(0);
  });
});

describe("requiredValiditySeconds", () => {
  it("uses the margin rule when min_valid is not given", () => {
    expect(requiredValiditySeconds({ minValidSeconds: 0, configuredMarginSeconds: 60, lifetimeSeconds: 300 })).toBe(60);
    expect(requiredValiditySeconds({ minValidSeconds: 0, configuredMarginSeconds: 60, lifetimeSeconds: 60 })).toBe(30);
    expect(requiredValiditySeconds({ minValidSeconds: -1, configuredMarginSeconds: 60, lifetimeSeconds: 20 })).toBe(10);
  });

  it("uses min_valid as given when a token of this lifetime can meet it", () => {
    expect(requiredValiditySeconds({ minValidSeconds: 200, configuredMarginSeconds: 60, lifetimeSeconds: 300 })).toBe(200);
    expect(requiredValiditySeconds({ minValidSeconds: 299, configuredMarginSeconds: 60, lifetimeSeconds: 300 })).toBe(299);
    expect(requiredValiditySeconds({ minValidSeconds: 10, configuredMarginSeconds: 60, lifetimeSeconds: 300 })).toBe(10);
  });

  it("caps min_valid at half the lifetime only when it is at least the lifetime", () => {
    expect(requiredValiditySeconds({ minValidSeconds: 300, configuredMarginSeconds: 60, lifetimeSeconds: 300 })).toBe(150);
    expect(requiredValiditySeconds({ minValidSeconds: 7200, configuredMarginSeconds: 60, lifetimeSeconds: 301 })).toBe(150);
  });

  it("keeps min_valid when the lifetime is unknown", () => {
    expect(requiredValiditySeconds({ minValidSeconds: 900, configuredMarginSeconds: 60, lifetimeSeconds: 0 })).toBe(900);
  });
});

describe("secondsLeft and lifetimeSeconds", () => {
  it("secondsLeft is fractional and negative once expired", () => {
    expect(secondsLeft(new Date(NOW.getTime() + 1500), NOW)).toBe(1.5);
    expect(secondsLeft(NOW, NOW)).toBe(0);
    expect(secondsLeft(new Date(NOW.getTime() - 2000), NOW)).toBe(-2);
  });

  it("lifetimeSeconds floors whole seconds and is 0 when inverted", () => {
    expect(lifetimeSeconds(NOW, new Date(NOW.getTime() + 300_999))).toBe(300);
    expect(lifetimeSeconds(NOW, NOW)).toBe(0);
    expect(lifetimeSeconds(new Date(NOW.getTime() + 10_000), NOW)).toBe(0);
  });
});
