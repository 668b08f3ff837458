import { describe, expect, it } from "vitest";
import { generateKeySpec, parseKeyRing } from "../../src/crypto/key-ring.js";
import { bindingFor, open, OpenError, seal, UnknownKeyError } from "../../src/crypto/seal.js";

const ring = parseKeyRing(generateKeySpec("k1"));
const aad = bindingFor(["tokenservice.v1/session", "sid", "user", "provider", "access"]);

/** Header is 1 format byte + 12-byte nonce; the tag is the last 16 bytes. */
const HEADER = 13;
const TAG = 16;

function flip(blob: Buffer, index: number): Buffer {
  const copy = Buffer.from(blob);
  copy[index] = (copy[index] ?? 0) ^ 0x01;
  return copy;
}

describe("seal / open", () => {
  it.each([
    ["ascii", "eyJhbGciOiJSUzI1NiJ9.payload.sig"],
    ["empty", ""],
    ["multi-byte UTF-8", "Zoë · 日本語 · 🚀🔐 · \u0000 nul"],
    ["64 KiB", "x".repeat(64 * 1024)],
    ["64 KiB of multi-byte text", "é🚀".repeat(Math.floor((64 * 1024) / 6))],
  ])("round-trips %s", (_label, plaintext) => {
    const { keyId, blob } = seal(ring, plaintext, aad);
    expect(keyId).toBe("k1");
    expect(blob.length).toBe(HEADER + Buffer.byteLength(plaintext, "utf8") + TAG);
    expect(blob[0]).toBe(1);
    expect(open(ring, keyId, blob, aad)).toBe(plaintext);
  });

  it("never stores the plaintext in clear", () => {
    const secret = "refresh-token-value-0123456789";
    const { blob } = seal(ring, secret, aad);
    expect(blob.includes(Buffer.from(secret))).toBe(false);
  });

  it("uses a fresh nonce for every seal", () => {
    const a = seal(ring, "same plaintext", aad).blob;
    const b = seal(ring, "same plaintext", aad).blob;
    expect(a.equals(b)).toBe(false);
    expect(a.subarray(1, HEADER).equals(b.subarray(1, HEADER))).toBe(false);
    expect(open(ring, "k1", a, aad)).toBe("same plaintext");
    expect(open(ring, "k1", b, aad)).toBe("same plaintext");
  });

  it("opens a blob that is a view into a larger buffer", () => {
    const { blob } = seal(ring, "in the middle", aad);
    const big = Buffer.concat([Buffer.from("prefix"), blob, Buffer.from("suffix")]);
    const view = new Uint8Array(big.buffer, big.byteOffset + 6, blob.length);
    expect(open(ring, "k1", view, aad)).toBe("in the middle");
  });

  it("fails with OpenError when any single byte is tampered with", () => {
    const { blob } = seal(ring, "tamper me please", aad);
    const regions = {
      format: [0],
      nonce: [1, 6, HEADER - 1],
      body: [HEADER, HEADER + 5, blob.length - TAG - 1],
      tag: [blob.length - TAG, blob.length - 1],
    };
    for (const [region, indexes] of Object.entries(regions)) {
      for (const i of indexes) {
        expect(() => open(ring, "k1", flip(blob, i), aad), `${region} byte ${i}`).toThrow(OpenError);
      }
    }
    // Every byte, exhaustively.
    for (let i = 0; i < blob.length; i++) {
      expect(() => open(ring, "k1", flip(blob, i), aad)).toThrow(OpenError);
    }
  });

  it("fails with OpenError under a different AAD", () => {
    const { blob } = seal(ring, "bound", aad);
    for (const other of [
      bindingFor(["tokenservice.v1/session", "sid", "user", "provider", "refresh"]),
      bindingFor(["tokenservice.v1/session", "sid2", "user", "provider", "access"]),
      Buffer.alloc(0),
    ]) {
      expect(() => open(ring, "k1", blob, other)).toThrow(OpenError);
    }
  });

  it.each([0, 1, HEADER, HEADER + TAG - 1])("fails with OpenError on a blob truncated to %i bytes", (n) => {
    const { blob } = seal(ring, "truncate me", aad);
    expect(() => open(ring, "k1", blob.subarray(0, n), aad)).toThrow(OpenError);
  });

  it("fails with OpenError when bytes are cut from the end or the body", () => {
    const { blob } = seal(ring, "truncate me too", aad);
    expect(() => open(ring, "k1", blob.subarray(0, blob.length - 1), aad)).toThrow(OpenError);
    const bodyCut = Buffer.concat([blob.subarray(0, HEADER + 2), blob.subarray(HEADER + 3)]);
    expect(() => open(ring, "k1", bodyCut, aad)).toThrow(OpenError);
    expect(() => open(ring, "k1", Buffer.concat([blob, Buffer.of(0)]), aad)).toThrow(OpenError);
  });

  it("OpenError messages carry no plaintext", () => {
    const { blob } = seal(ring, "plaintext-marker", aad);
    try {
      open(ring, "k1", flip(blob, HEADER), aad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(OpenError);
      expect((err as Error).name).toBe("OpenError");
      expect((err as Error).message).not.toContain("plaintext-marker");
    }
  });

  it("fails with UnknownKeyError naming the key id the ring lacks", () => {
    const { blob } = seal(ring, "x", aad);
    try {
      open(ring, "retired", blob, aad);
      expect.unreachable();
    } catch (err) {
      expect(err).toBeInstanceOf(UnknownKeyError);
      expect((err as UnknownKeyError).keyId).toBe("retired");
      expect((err as Error).message).toContain('"retired"');
    }
  });

  it("fails with OpenError when the same kid names a different key", () => {
    const { blob } = seal(ring, "x", aad);
    const impostor = parseKeyRing(generateKeySpec("k1"));
    expect(() => open(impostor, "k1", blob, aad)).toThrow(OpenError);
  });

  it("opens blobs sealed by an old key after rotation to a new primary", () => {
    const oldSpec = generateKeySpec("old");
    const before = parseKeyRing(oldSpec);
    const sealedOld = seal(before, "written before rotation", aad);
    expect(sealedOld.keyId).toBe("old");

    const after = parseKeyRing(`${generateKeySpec("new")},${oldSpec}`);
    const sealedNew = seal(after, "written after rotation", aad);
    expect(sealedNew.keyId).toBe("new");
    expect(open(after, "old", sealedOld.blob, aad)).toBe("written before rotation");
    expect(open(after, "new", sealedNew.blob, aad)).toBe("written after rotation");
    // The old ring cannot read what the new primary wrote.
    expect(() => open(before, "new", sealedNew.blob, aad)).toThrow(UnknownKeyError);
    // A blob cannot be opened under the wrong key id of the same ring.
    expect(() => open(after, "new", sealedOld.blob, aad)).toThrow(OpenError);
  });
});

describe("bindingFor", () => {
  it("is unambiguous across part boundaries", () => {
    expect(bindingFor(["ab", "c"]).equals(bindingFor(["a", "bc"]))).toBe(false);
    expect(bindingFor(["", "a"]).equals(bindingFor(["a", ""]))).toBe(false);
    expect(bindingFor(["a"]).equals(bindingFor(["a", ""]))).toBe(false);
    expect(bindingFor([]).equals(bindingFor([""]))).toBe(false);
  });

  it("is deterministic and length-prefixes each UTF-8 part", () => {
    expect(bindingFor(["ab", "é"]).equals(bindingFor(["ab", "é"]))).toBe(true);
    expect(bindingFor(["ab", "é"])).toEqual(Buffer.from([0, 0, 0, 2, 0x61, 0x62, 0, 0, 0, 2, 0xc3, 0xa9]));
    expect(bindingFor([]).length).toBe(0);
  });

  it("a blob sealed under one split does not open under the other", () => {
    const { blob } = seal(ring, "x", bindingFor(["ab", "c"]));
    expect(() => open(ring, "k1", blob, bindingFor(["a", "bc"]))).toThrow(OpenError);
    expect(open(ring, "k1", blob, bindingFor(["ab", "c"]))).toBe("x");
  });
});
