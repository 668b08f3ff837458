import { randomBytes } from "node:crypto";
import { describe, expect, it } from "vitest";
import { createKeyRing, generateKeySpec, KeyRingError, parseKeyRing } from "../../src/crypto/key-ring.js";

const b64 = (n: number) => randomBytes(n).toString("base64");

/** Runs `fn`, expects a KeyRingError, and returns its message. */
function keyRingError(fn: () => unknown): string {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(KeyRingError);
    expect((err as Error).name).toBe("KeyRingError");
    return (err as Error).message;
  }
  throw new Error("expected a KeyRingError");
}

describe("parseKeyRing", () => {
  it("parses one key", () => {
    const ring = parseKeyRing(`k1:${b64(32)}`);
    expect(ring.primary.id).toBe("k1");
    expect(ring.ids()).toEqual(["k1"]);
    expect(ring.primary.key.type).toBe("secret");
    expect(ring.primary.key.symmetricKeySize).toBe(32);
    expect(ring.get("k1")).toBe(ring.primary);
    expect(ring.get("nope")).toBeUndefined();
  });

  it("parses several keys; the first is primary and every key is reachable", () => {
    const ring = parseKeyRing(`new:${b64(32)},old:${b64(32)} older.v_1-x:${b64(32)}\n\tlast:${b64(32)}`);
    expect(ring.primary.id).toBe("new");
    expect(ring.ids()).toEqual(["new", "old", "older.v_1-x", "last"]);
    for (const id of ring.ids()) expect(ring.get(id)?.id).toBe(id);
  });

  it("accepts base64url keys and unpadded base64", () => {
    const raw = Buffer.alloc(32, 0xfb); // encodes with '+' / '-' characters
    const url = parseKeyRing(`a:${raw.toString("base64url")}`);
    const std = parseKeyRing(`a:${raw.toString("base64")}`);
    expect(url.primary.key.export().equals(raw)).toBe(true);
    expect(std.primary.key.export().equals(raw)).toBe(true);
    expect(parseKeyRing(`a:${raw.toString("base64").replace(/=+$/, "")}`).primary.key.export().equals(raw)).toBe(true);
  });

  it("ignores surrounding whitespace and empty entries", () => {
    const ring = parseKeyRing(`  ,k1:${b64(32)}, ,  k2:${b64(32)},  `);
    expect(ring.ids()).toEqual(["k1", "k2"]);
  });

  it.each(["", "   ", ",", " , \n ,"])("rejects an empty spec %j", (spec) => {
    expect(keyRingError(() => parseKeyRing(spec))).toMatch(/no keys given/);
  });

  it("names the source in its messages", () => {
    expect(keyRingError(() => parseKeyRing("", "keys.txt"))).toMatch(/^keys\.txt: /);
    expect(keyRingError(() => parseKeyRing(""))).toMatch(/^TOKEN_SERVICE_ENCRYPTION_KEYS: /);
  });

  it.each([
    ["a key with no kid", (k: string) => k],
    ["an empty kid", (k: string) => `:${k}`],
    ["a kid with a space-separated key", (k: string) => `k1 ${k}`],
  ])("rejects %s without echoing the key", (_label, make) => {
    const key = b64(32);
    const msg = keyRingError(() => parseKeyRing(make(key)));
    expect(msg).toMatch(/entry 1 is not of the form kid:base64key/);
    expect(msg).not.toContain(key);
  });

  it.each(["-starts-with-dash", ".dot", "has/slash", "ünïcode", "x".repeat(65), "a+b"])(
    "rejects the bad kid %j without echoing the key",
    (kid) => {
      const key = b64(32);
      const msg = keyRingError(() => parseKeyRing(`${kid}:${key}`));
      expect(msg).toContain("must be 1-64 letters, digits");
      expect(msg).not.toContain(key);
    },
  );

  it("rejects a kid with an invalid character, naming the entry (never the text)", () => {
    const key = b64(32);
    const msg = keyRingError(() => parseKeyRing(`k$1:${key}`));
    expect(msg).toContain("entry 1: the key id must be");
    expect(msg).not.toContain("k$1");
    expect(msg).not.toContain(key);
  });

  it("accepts a 64-character kid", () => {
    const kid = "k".repeat(64);
    expect(parseKeyRing(`${kid}:${b64(32)}`).primary.id).toBe(kid);
  });

  it.each([
    ["a '$' inside", (k: string) => `${k.slice(0, 10)}$${k.slice(11)}`],
    ["a '.' inside", (k: string) => `${k.slice(0, 10)}.${k.slice(11)}`],
    ["padding in the middle", (k: string) => `${k.slice(0, 10)}=${k.slice(11)}`],
    ["three padding characters", (k: string) => `${k.replace(/=+$/, "")}===`],
    ["an empty key", () => ""],
    ["a second colon", (k: string) => `${k}:extra`],
  ])("rejects non-base64 material (%s) without echoing it", (_label, mangle) => {
    const key = b64(32);
    const bad = mangle(key);
    const msg = keyRingError(() => parseKeyRing(`k1:${bad}`));
    expect(msg).toMatch(/entry 1: the key (is not base64|must decode to 32 bytes)/);
    expect(msg).not.toContain(key);
    if (bad.length > 8) expect(msg).not.toContain(bad);
  });

  it.each([16, 31, 33, 64, 1])("rejects a %i-byte key, naming the length but not the key", (n) => {
    const key = b64(n);
    const msg = keyRingError(() => parseKeyRing(`k1:${key}`));
    expect(msg).toContain(`must decode to 32 bytes (AES-256), got ${n}`);
    expect(msg).not.toContain(key);
  });

  it("rejects a duplicate kid even with different keys", () => {
    const k1 = b64(32);
    const k2 = b64(32);
    const msg = keyRingError(() => parseKeyRing(`a:${k1},b:${b64(32)},a:${k2}`));
    expect(msg).toContain("entry 3: the key id repeats an earlier entry's");
    expect(msg).not.toContain(k1);
    expect(msg).not.toContain(k2);
  });

  it("names the failing entry by position, never by content", () => {
    const good = b64(32);
    const msg = keyRingError(() => parseKeyRing(`k1:${good},${b64(32)}`));
    expect(msg).toContain("entry 2");
    expect(msg).not.toContain(good);
  });

  // BUG (reported): an operator who swaps the order ("base64key:kid") gets the key
  // material echoed back as the "key id". Marked `fails` until src is fixed.
  it("does not echo key material when kid and key are swapped", () => {
    const key = Buffer.alloc(32, 0xfb).toString("base64"); // "+++…+s="
    const msg = keyRingError(() => parseKeyRing(`${key}:k1`));
    expect(msg).not.toContain(key);
  });
});

describe("createKeyRing", () => {
  it("refuses an empty list", () => {
    expect(keyRingError(() => createKeyRing([]))).toMatch(/at least one key/);
  });
});

describe("generateKeySpec", () => {
  it("generates a spec that parses into a 32-byte key with a dated default kid", () => {
    const spec = generateKeySpec();
    const ring = parseKeyRing(spec);
    expect(ring.primary.id).toMatch(/^k\d{8}-[0-9a-f]{6}$/);
    expect(ring.primary.key.symmetricKeySize).toBe(32);
  });

  it("uses the given kid and fresh random material each time", () => {
    const a = generateKeySpec("mykey");
    const b = generateKeySpec("mykey");
    expect(a.startsWith("mykey:")).toBe(true);
    expect(a).not.toBe(b);
    expect(parseKeyRing(a).primary.id).toBe("mykey");
  });

  it("generated specs concatenate into a multi-key ring", () => {
    const ring = parseKeyRing([generateKeySpec("a"), generateKeySpec("b")].join(","));
    expect(ring.ids()).toEqual(["a", "b"]);
  });

  it("refuses a bad kid", () => {
    expect(keyRingError(() => generateKeySpec("bad kid"))).toContain('key id "bad kid"');
  });
});
