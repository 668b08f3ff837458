import { createSecretKey, randomBytes, type KeyObject } from "node:crypto";

/** One AES-256 key and the id stored beside every row it encrypted. */
export interface RingKey {
  readonly id: string;
  readonly key: KeyObject;
}

/**
 * The encryption keys: the first (primary) encrypts, every key decrypts.
 * Keys are imported once as KeyObjects, never per request.
 */
export interface KeyRing {
  readonly primary: RingKey;
  get(id: string): RingKey | undefined;
  ids(): string[];
}

/** A key specification problem; the message never contains key material. */
export class KeyRingError extends Error {
  override name = "KeyRingError";
}

const KID = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;

/**
 * Parses `kid:base64key[,kid:base64key…]` (base64 or base64url, 32 bytes each).
 * `source` names where the text came from, for error messages.
 */
export function parseKeyRing(spec: string, source = "TOKEN_SERVICE_ENCRYPTION_KEYS"): KeyRing {
  const entries = spec
    .split(/[,\s]+/)
    .map((s) => s.trim())
    .filter((s) => s !== "");
  if (entries.length === 0) throw new KeyRingError(`${source}: no keys given; expected kid:base64key[,kid:base64key…]`);
  const keys: RingKey[] = [];
  // Messages name entries by position only: a kid and a key swapped by mistake must not put
  // the key into a log line.
  entries.forEach((entry, index) => {
    const where = `${source}: entry ${index + 1}`;
    const colon = entry.indexOf(":");
    if (colon <= 0) throw new KeyRingError(`${where} is not of the form kid:base64key`);
    const id = entry.slice(0, colon);
    const material = entry.slice(colon + 1);
    if (!KID.test(id)) throw new KeyRingError(`${where}: the key id must be 1-64 letters, digits, '.', '_' or '-'`);
    if (!/^[A-Za-z0-9+/_-]+={0,2}$/.test(material)) throw new KeyRingError(`${where}: the key is not base64`);
    const bytes = Buffer.from(material, "base64");
    if (bytes.length !== 32) {
      throw new KeyRingError(`${where}: the key must decode to 32 bytes (AES-256), got ${bytes.length}`);
    }
    if (keys.some((k) => k.id === id)) throw new KeyRingError(`${where}: the key id repeats an earlier entry's`);
    keys.push({ id, key: createSecretKey(bytes) });
    bytes.fill(0);
  });
  return createKeyRing(keys);
}

/** Builds a ring from already imported keys; the first is the primary. */
export function createKeyRing(keys: RingKey[]): KeyRing {
  const [primary] = keys;
  if (!primary) throw new KeyRingError("a key ring needs at least one key");
  const byId = new Map(keys.map((k) => [k.id, k]));
  return {
    primary,
    get: (id) => byId.get(id),
    ids: () => keys.map((k) => k.id),
  };
}

/** A new random key in the `kid:base64` form accepted by parseKeyRing. */
export function generateKeySpec(id?: string): string {
  const kid = id ?? `k${new Date().toISOString().slice(0, 10).replaceAll("-", "")}-${randomBytes(3).toString("hex")}`;
  if (!KID.test(kid)) throw new KeyRingError(`key id "${kid}" must be 1-64 letters, digits, '.', '_' or '-'`);
  return `${kid}:${randomBytes(32).toString("base64")}`;
}
