import { createCipheriv, createDecipheriv, randomBytes } from "node:crypto";
import type { KeyRing } from "./key-ring.js";

/** Format byte of a sealed blob: 1 = AES-256-GCM, 96-bit nonce, 128-bit tag. */
const FORMAT_V1 = 1;
const NONCE_BYTES = 12;
const TAG_BYTES = 16;
const HEADER_BYTES = 1 + NONCE_BYTES;

/** The row names a key id the ring does not hold. */
export class UnknownKeyError extends Error {
  override name = "UnknownKeyError";
  constructor(readonly keyId: string) {
    super(`encryption key "${keyId}" is not configured`);
  }
}

/** The blob failed authentication: tampered, truncated, or bound to other data. */
export class OpenError extends Error {
  override name = "OpenError";
}

/**
 * Additional authenticated data binding a ciphertext to its row and field, so
 * a blob copied into another row or column fails to open. Each part is length
 * prefixed, so no two different tuples encode alike.
 */
export function bindingFor(parts: readonly string[]): Buffer {
  const encoded = parts.map((p) => Buffer.from(p, "utf8"));
  const out = Buffer.allocUnsafe(encoded.reduce((n, b) => n + 4 + b.length, 0));
  let offset = 0;
  for (const b of encoded) {
    offset = out.writeUInt32BE(b.length, offset);
    offset += b.copy(out, offset);
  }
  return out;
}

/** Encrypts under the ring's primary key with a fresh random nonce. */
export function seal(ring: KeyRing, plaintext: string, aad: Buffer): { keyId: string; blob: Buffer } {
  const { id, key } = ring.primary;
  const nonce = randomBytes(NONCE_BYTES);
  const cipher = createCipheriv("aes-256-gcm", key, nonce, { authTagLength: TAG_BYTES });
  cipher.setAAD(aad);
  const body = cipher.update(plaintext, "utf8");
  const final = cipher.final();
  const blob = Buffer.concat([Buffer.of(FORMAT_V1), nonce, body, final, cipher.getAuthTag()]);
  return { keyId: id, blob };
}

/** Decrypts a blob written by `seal` with key `keyId` and the same AAD. */
export function open(ring: KeyRing, keyId: string, blob: Uint8Array, aad: Buffer): string {
  const ringKey = ring.get(keyId);
  if (!ringKey) throw new UnknownKeyError(keyId);
  if (blob.length < HEADER_BYTES + TAG_BYTES || blob[0] !== FORMAT_V1) {
    throw new OpenError("ciphertext is malformed");
  }
  const buf = Buffer.from(blob.buffer, blob.byteOffset, blob.byteLength);
  const nonce = buf.subarray(1, HEADER_BYTES);
  const tag = buf.subarray(buf.length - TAG_BYTES);
  const decipher = createDecipheriv("aes-256-gcm", ringKey.key, nonce, { authTagLength: TAG_BYTES });
  decipher.setAAD(aad);
  decipher.setAuthTag(tag);
  try {
    const head = decipher.update(buf.subarray(HEADER_BYTES, buf.length - TAG_BYTES));
    const tail = decipher.final();
    return tail.length === 0 ? head.toString("utf8") : Buffer.concat([head, tail]).toString("utf8");
  } catch {
    throw new OpenError("ciphertext failed authentication");
  }
}
