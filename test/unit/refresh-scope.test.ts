import { Writable } from "node:stream";
import { pino } from "pino";
import { describe, expect, it } from "vitest";
import type { ProviderConfig } from "../../src/config.js";
import { refreshScope, warnScopesNotSentOnRefresh } from "../../src/providers/refresh-scope.js";

describe("refreshScope", () => {
  it("sends no scope without refresh_scopes, whatever the grant", () => {
    expect(refreshScope(undefined, "openid offline_access")).toBeUndefined();
    expect(refreshScope([], "openid offline_access")).toBeUndefined();
  });

  it("sends refresh_scopes the session was granted, in their order", () => {
    expect(refreshScope(["offline_access", "openid"], "openid profile offline_access")).toBe("offline_access openid");
  });

  it("never sends more than the session was granted", () => {
    expect(refreshScope(["openid", "offline_access", "email"], "openid")).toBe("openid");
  });

  it("sends none when the session holds none of them, or its scope is unknown", () => {
    expect(refreshScope(["email"], "openid")).toBeUndefined();
    expect(refreshScope(["openid"], "")).toBeUndefined();
    expect(refreshScope(["openid"], undefined)).toBeUndefined();
  });

  it("reads the granted scope as space-separated tokens (no partial matches)", () => {
    expect(refreshScope(["open"], "openid  offline_access")).toBeUndefined();
  });
});

function provider(p: Partial<ProviderConfig>): ProviderConfig {
  return { id: "corp", source: "config", scopes: undefined, refreshScopes: undefined, ...p } as ProviderConfig;
}

describe("warnScopesNotSentOnRefresh", () => {
  it("warns once per YAML provider with scopes and no refresh_scopes", () => {
    const lines: Array<Record<string, unknown>> = [];
    const sink = new Writable({
      write(chunk: Buffer, _enc, done) {
        for (const l of chunk.toString().split("\n").filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>);
        done();
      },
    });
    const logger = pino({ level: "info" }, sink);
    warnScopesNotSentOnRefresh(
      logger,
      [
        provider({ id: "old", scopes: ["openid", "offline_access"] }),
        provider({ id: "set", scopes: ["openid"], refreshScopes: ["openid"] }),
        provider({ id: "silenced", scopes: ["openid"], refreshScopes: [] }),
        provider({ id: "plain" }),
        provider({ id: "runtime", source: "runtime", scopes: ["openid"] }),
      ],
      "startup",
    );
    expect(lines.map((l) => [l.provider, l.level, l.trigger])).toEqual([["old", 40, "startup"]]);
    expect(String(lines[0]!.msg)).toMatch(/no longer sent on refresh.*refresh_scopes/);
  });
});
