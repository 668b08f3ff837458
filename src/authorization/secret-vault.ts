import type { KeyRing } from "../crypto/key-ring.js";
import { bindingFor, open, OpenError, seal, UnknownKeyError } from "../crypto/seal.js";
import { CorruptSessionError, KeyUnavailableError } from "../sessions/errors.js";

/**
 * Seals the secrets that belong to a provider or a started authorization:
 * each ciphertext's AAD binds it to its kind, its row id and its column, so a
 * ciphertext copied into another row or column does not open.
 */
export class SecretVault {
  constructor(private readonly ring: KeyRing) {}

  get primaryKeyId(): string {
    return this.ring.primary.id;
  }

  hasKey(keyId: string): boolean {
    return this.ring.get(keyId) !== undefined;
  }

  seal(kind: "provider" | "authorization" | "signing_key", rowId: string, column: string, plaintext: string): { keyId: string; blob: Buffer } {
    return seal(this.ring, plaintext, bindingFor([`tokenservice.v1/${kind}`, rowId, column]));
  }

  open(kind: "provider" | "authorization" | "signing_key", rowId: string, column: string, keyId: string, blob: Buffer): string {
    try {
      return open(this.ring, keyId, blob, bindingFor([`tokenservice.v1/${kind}`, rowId, column]));
    } catch (err) {
      if (err instanceof UnknownKeyError) throw new KeyUnavailableError(keyId, { cause: err });
      if (err instanceof OpenError) throw new CorruptSessionError({ cause: err });
      throw err;
    }
  }
}
