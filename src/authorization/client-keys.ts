import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type JWK } from "jose";
import type { CryptoKey } from "openid-client";
import type { SigningKeyRepository, SigningKeyRow } from "../db/signing-key-repository.js";
import type { Logger } from "../logger.js";
import { served, type ServedBody } from "./client-metadata.js";
import type { SecretVault } from "./secret-vault.js";

const ALG = "ES256";

/** A key that signs client assertions now. */
export interface AssertionKey {
  key: CryptoKey;
  kid: string;
}

/** Makes a new signing key (EC P-256), its private JWK sealed under the primary key and bound to its kid. */
async function newKeyRow(vault: SecretVault, now: Date): Promise<SigningKeyRow> {
  const { privateKey, publicKey } = await generateKeyPair(ALG, { extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub);
  const priv = JSON.stringify({ ...(await exportJWK(privateKey)), kid, alg: ALG });
  const sealed = vault.seal("signing_key", kid, "private_jwk", priv);
  return { kid, keyId: sealed.keyId, privateCt: sealed.blob, publicJwk: JSON.stringify({ ...pub, kid, alg: ALG, use: "sig" }), createdAt: now, version: 1 };
}

/**
 * The service's client signing keys, as every replica reads them from the
 * database: the newest signs client assertions (private_key_jwt), and every
 * stored key is in the published JWK set. Reading happens on load(), never
 * per request.
 */
export class ClientSigningKeys {
  private current: AssertionKey | undefined;
  private jwks: ServedBody = served(JSON.stringify({ keys: [] }));

  constructor(
    private readonly repo: SigningKeyRepository,
    private readonly vault: SecretVault,
    private readonly logger: Logger,
  ) {}

  /** Creates the first key when there is none yet (private_key_jwt turned on), then loads them. */
  async ensure(): Promise<void> {
    if ((await this.repo.list()).length === 0) {
      const row = await newKeyRow(this.vault, new Date());
      await this.repo.insert(row);
      this.logger.info({ kid: row.kid }, "client signing key created (private_key_jwt)");
    }
    await this.load();
  }

  /** Re-reads the keys (after a rotation). */
  async load(): Promise<void> {
    const rows = await this.repo.list();
    this.jwks = served(JSON.stringify({ keys: rows.map((r) => JSON.parse(r.publicJwk) as JWK) }));
    const newest = rows[0];
    if (!newest || newest.kid === this.current?.kid) return;
    const jwk = JSON.parse(this.vault.open("signing_key", newest.kid, "private_jwk", newest.keyId, newest.privateCt)) as JWK;
    this.current = { key: (await importJWK(jwk, ALG)) as CryptoKey, kid: newest.kid };
  }

  /** The key that signs now; throws when none is loaded. */
  signer(): AssertionKey {
    if (!this.current) throw new Error("no client signing key is loaded");
    return this.current;
  }

  /** The JWK set to publish. */
  published(): ServedBody {
    return this.jwks;
  }
}

/** What `keys rotate` did to the client signing keys. */
export interface SigningKeyRotation {
  added: string | undefined;
  retired: string[];
  resealed: number;
}

/**
 * A rotation (`keys rotate`): a new key signs from now on; the key that
 * signed until now stays published, so assertions it signed and servers that
 * cached the JWK set keep verifying; keys superseded by an earlier rotation
 * are deleted. The key kept is re-sealed under the primary key. Nothing
 * happens when no key exists (private_key_jwt was never used).
 */
export async function rotateSigningKeys(repo: SigningKeyRepository, vault: SecretVault): Promise<SigningKeyRotation> {
  const rows = await repo.list();
  if (rows.length === 0) return { added: undefined, retired: [], resealed: 0 };
  const [kept, ...older] = rows as [SigningKeyRow, ...SigningKeyRow[]];
  const retired = older.map((r) => r.kid);
  await repo.delete(retired);
  let resealed = 0;
  if (kept.keyId !== vault.primaryKeyId) {
    const sealed = vault.seal("signing_key", kept.kid, "private_jwk", vault.open("signing_key", kept.kid, "private_jwk", kept.keyId, kept.privateCt));
    if (await repo.reseal(kept.kid, kept.version, { keyId: sealed.keyId, privateCt: sealed.blob })) resealed++;
  }
  // One millisecond later than the kept key at least, so "newest" is never a tie.
  const row = await newKeyRow(vault, new Date(Math.max(Date.now(), kept.createdAt.getTime() + 1)));
  await repo.insert(row);
  return { added: row.kid, retired, resealed };
}
