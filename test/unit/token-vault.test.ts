import { describe, expect, it } from "vitest";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { OpenError, UnknownKeyError } from "../../src/crypto/seal.js";
import type { SessionRow } from "../../src/db/session-entity.js";
import { CorruptSessionError, KeyUnavailableError } from "../../src/sessions/errors.js";
import { TokenVault, type OpenTokens } from "../../src/sessions/token-vault.js";
import { sessionRow } from "../helpers/session-row.js";

const oldSpec = generateKeySpec("old");
const vault = new TokenVault(parseKeyRing(`${generateKeySpec("k1")},${oldSpec}`));

const SID = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
const OTHER_SID = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB";
const TOKENS: OpenTokens = { access: "access-token-A", refresh: "refresh-token-R", id: "id-token-I" };

/** A session row around `tokens` sealed with `v`. */
function row(owner: { id: string; userId: string; provider: string }, v: TokenVault, tokens: OpenTokens = TOKENS): SessionRow {
  return sessionRow(v, owner, tokens, { now: new Date("2026-01-15T12:00:00Z"), scope: "openid" });
}

const alice = { id: SID, userId: "alice", provider: "google" };

function corrupt(fn: () => unknown): CorruptSessionError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(CorruptSessionError);
    const e = err as CorruptSessionError;
    expect(e.code).toBe("CORRUPT_SESSION");
    expect(e.cause).toBeInstanceOf(OpenError);
    return e;
  }
  throw new Error("expected CorruptSessionError");
}

describe("TokenVault", () => {
  it("seals every column under the primary key and opens them again", () => {
    const r = row(alice, vault);
    expect(vault.primaryKeyId).toBe("k1");
    expect(r.keyId).toBe("k1");
    expect(r.refreshCt).not.toBeNull();
    expect(r.idCt).not.toBeNull();
    expect(vault.openAll(r)).toEqual(TOKENS);
    expect(vault.openField(r, "refresh")).toBe("refresh-token-R");
  });

  it("leaves absent refresh and id tokens empty", () => {
    const r = row(alice, vault, { access: "only-access", refresh: undefined, id: undefined });
    expect(r.refreshCt).toBeNull();
    expect(r.idCt).toBeNull();
    expect(vault.openAll(r)).toEqual({ access: "only-access", refresh: undefined, id: undefined });
  });

  it("does not store tokens in clear", () => {
    const r = row(alice, vault);
    for (const ct of [r.accessCt, r.refreshCt, r.idCt]) {
      for (const t of Object.values(TOKENS)) expect(ct?.includes(Buffer.from(t as string))).toBe(false);
    }
  });

  it.each([
    ["session id", { ...alice, id: OTHER_SID }],
    ["user", { ...alice, userId: "mallory" }],
    ["provider", { ...alice, provider: "github" }],
  ])("a ciphertext copied to another %s fails with CorruptSessionError", (_label, other) => {
    const source = row(alice, vault);
    const target = row(other, vault, { access: "mine", refresh: "mine-r", id: "mine-i" });
    const moved: SessionRow = { ...target, accessCt: source.accessCt, refreshCt: source.refreshCt, idCt: source.idCt };
    corrupt(() => vault.openField(moved, "access"));
    corrupt(() => vault.openField(moved, "refresh"));
    corrupt(() => vault.openField(moved, "id"));
    corrupt(() => vault.openAll(moved));
    // The untouched target still opens.
    expect(vault.openAll(target)).toEqual({ access: "mine", refresh: "mine-r", id: "mine-i" });
  });

  it("a ciphertext copied to another column of the same row fails", () => {
    const r = row(alice, vault);
    corrupt(() => vault.openField({ ...r, accessCt: r.refreshCt as Buffer }, "access"));
    corrupt(() => vault.openField({ ...r, refreshCt: r.accessCt }, "refresh"));
    corrupt(() => vault.openField({ ...r, idCt: r.accessCt }, "id"));
    corrupt(() => vault.openField({ ...r, refreshCt: r.idCt }, "refresh"));
  });

  it("a tampered column fails with CorruptSessionError whose message holds no token or id", () => {
    const r = row(alice, vault);
    const tampered = Buffer.from(r.accessCt);
    tampered[20] = (tampered[20] ?? 0) ^ 0xff;
    const err = corrupt(() => vault.openField({ ...r, accessCt: tampered }, "access"));
    expect(err.message).not.toContain(SID);
    expect(err.message).not.toContain("access-token-A");
  });

  it("a row under a key the ring lacks fails with KeyUnavailableError", () => {
    const foreign = new TokenVault(parseKeyRing(generateKeySpec("elsewhere")));
    const r = row(alice, foreign);
    expect(vault.hasKey("elsewhere")).toBe(false);
    try {
      vault.openField(r, "access");
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(KeyUnavailableError);
      const e = err as KeyUnavailableError;
      expect(e.code).toBe("KEY_UNAVAILABLE");
      expect(e.keyId).toBe("elsewhere");
      expect(e.cause).toBeInstanceOf(UnknownKeyError);
    }
    expect(() => vault.openAll(r)).toThrow(KeyUnavailableError);
  });

  it("an empty column does not need the key", () => {
    const foreign = new TokenVault(parseKeyRing(generateKeySpec("elsewhere")));
    const r = row(alice, foreign, { access: "a", refresh: undefined, id: undefined });
    expect(vault.openField(r, "refresh")).toBeUndefined();
    expect(vault.openField(r, "id")).toBeUndefined();
  });

  it("opens rows written by a key that is no longer primary", () => {
    const before = new TokenVault(parseKeyRing(oldSpec));
    const r = row(alice, before);
    expect(r.keyId).toBe("old");
    expect(vault.hasKey("old")).toBe(true);
    expect(vault.openAll(r)).toEqual(TOKENS);
  });
});
