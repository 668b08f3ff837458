import { describe, expect, it } from "vitest";
import { ChallengeSyntaxError, parseBearerChallenge, tryParseBearerChallenge } from "../../src/providers/challenge.js";
import { selectScopes } from "../../src/authorization/scope-selection.js";
import type { ProviderConfig } from "../../src/config.js";

describe("WWW-Authenticate Bearer challenges (RFC 6750 section 3, RFC 7235)", () => {
  it("reads error, scope and resource_metadata, quoted or as tokens, among other challenges", () => {
    expect(
      parseBearerChallenge(
        'Bearer error="insufficient_scope", scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", error_description="needs \\"write\\""',
      ),
    ).toEqual({
      error: "insufficient_scope",
      scopes: ["files:read", "files:write"],
      resourceMetadata: "https://mcp.example.com/.well-known/oauth-protected-resource",
    });
    expect(parseBearerChallenge('Basic realm="x", Bearer realm="mcp",scope="a b", error=invalid_token, DPoP algs="ES256"')).toEqual({
      error: "invalid_token",
      scopes: ["a", "b"],
      resourceMetadata: undefined,
    });
    expect(parseBearerChallenge("bearer")).toEqual({ error: undefined, scopes: [], resourceMetadata: undefined });
    // The example of the MCP spec: parameters folded onto several lines (as one header value, spaces between).
    expect(parseBearerChallenge('Bearer resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource",\t scope="files:read"').scopes).toEqual([
      "files:read",
    ]);
  });

  it("refuses garbage with a reason that never quotes it", () => {
    const bad = [
      "",
      "Basic realm=x",
      '"Bearer"',
      'Bearer scope="unterminated',
      'Bearer scope="a", scope="b"',
      "Bearer scope=",
      'Bearer scope="a\u0000b"',
      'Bearer scope="caf\u00e9"',
      'Bearer scope="a\\"b"',
      'Bearer error="x" trailing',
      'Bearer resource_metadata="javascript:alert(1)"',
      'Bearer scope="a", Bearer scope="b"',
      `Bearer scope="${"s ".repeat(65)}"`,
      `Bearer scope="${"a".repeat(5000)}"`,
      "Bearer =x",
      "Bearer,,,",
    ];
    for (const value of bad) {
      let caught: unknown;
      try {
        parseBearerChallenge(value);
      } catch (err) {
        caught = err;
      }
      if (value === "Bearer,,,") {
        expect(caught).toBeUndefined();
        continue;
      }
      expect(caught, value).toBeInstanceOf(ChallengeSyntaxError);
      expect((caught as Error).message).not.toContain("alert");
      expect(tryParseBearerChallenge(value)).toBeUndefined();
    }
  });

  it("never throws anything else, for random input", () => {
    const alphabet = ' ,="\\\t=abcBearer:/_-\u00ff\u0000';
    let seed = 7;
    const rand = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed / 2 ** 31);
    for (let i = 0; i < 5000; i++) {
      const value = Array.from({ length: Math.floor(rand() * 60) }, () => alphabet[Math.floor(rand() * alphabet.length)]).join("");
      const parsed = tryParseBearerChallenge(`Bearer ${value}`);
      if (parsed) for (const s of parsed.scopes) expect(s).toMatch(/^[\x21\x23-\x5B\x5D-\x7E]+$/);
    }
  });
});

describe("scope selection (MCP authorization, Scope Selection Strategy and Step-Up)", () => {
  const config = (runtime?: Partial<NonNullable<ProviderConfig["runtime"]>>, scopes?: string[]) =>
    ({ scopes, runtime: runtime ? { registration: "static", resourceUrl: undefined, openid: false, createdAt: new Date(), ...runtime } : undefined }) as ProviderConfig;
  const base = { requested: [], challenge: undefined, granted: undefined, serverScopes: ["openid", "offline_access"], openid: true };

  it("asks for the challenge's scope, then challenge_scopes, then scopes_supported, then the provider's default, then nothing", () => {
    const runtime = { challengeScopes: ["mcp:tools"], scopesSupported: ["mcp:read", "mcp:tools"] };
    const challenge = { error: undefined, scopes: ["files:read"], resourceMetadata: undefined };
    expect(selectScopes({ ...base, challenge, config: config(runtime) })).toEqual(["files:read", "offline_access"]);
    expect(selectScopes({ ...base, config: config(runtime) })).toEqual(["mcp:tools", "offline_access"]);
    expect(selectScopes({ ...base, config: config({ scopesSupported: runtime.scopesSupported }) })).toEqual(["mcp:read", "mcp:tools", "offline_access"]);
    expect(selectScopes({ ...base, config: config({}, ["profile"]) })).toEqual(["profile"]);
    expect(selectScopes({ ...base, config: config({}) })).toEqual(["openid", "offline_access"]);
    expect(selectScopes({ ...base, openid: false, config: config({}) })).toEqual([]);
    // The caller's scopes win, and without offline_access added; a server that does not list offline_access gets none.
    expect(selectScopes({ ...base, requested: ["x"], challenge, config: config(runtime) })).toEqual(["x"]);
    expect(selectScopes({ ...base, serverScopes: undefined, config: config(runtime) })).toEqual(["mcp:tools"]);
  });

  it("steps up with the union of the granted scopes and the challenge's", () => {
    const challenge = { error: "insufficient_scope", scopes: ["mcp:tools", "mcp:admin"], resourceMetadata: undefined };
    expect(selectScopes({ ...base, challenge, granted: ["mcp:tools", "openid"], config: config({}) })).toEqual(["mcp:tools", "openid", "mcp:admin", "offline_access"]);
    expect(selectScopes({ ...base, granted: [], config: config({ challengeScopes: ["mcp:tools"] }) })).toEqual(["mcp:tools", "offline_access"]);
  });
});
