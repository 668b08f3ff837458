import { EntitySchema, type MikroORM } from "@mikro-orm/core";
import { asBuffer } from "./session-entity.js";
import { runOn } from "./session-repository.js";

/**
 * A signing key of the service's own OAuth client (private_key_jwt client
 * assertions of CIMD providers). The private key is stored only as
 * AES-256-GCM ciphertext bound to its kid; the public JWK is in clear, as the
 * JWKS publishes it. The newest key signs; older ones are only published.
 */
export interface SigningKeyRow {
  /** The JWK `kid`. */
  kid: string;
  /** Key-ring key of the ciphertext. */
  keyId: string;
  privateCt: Buffer;
  /** The public JWK, JSON. */
  publicJwk: string;
  createdAt: Date;
  version: number;
}

export const SigningKeySchema = new EntitySchema<SigningKeyRow>({
  name: "SigningKey",
  tableName: "client_signing_keys",
  properties: {
    kid: { type: "string", primary: true, length: 64 },
    keyId: { type: "string", length: 64 },
    privateCt: { type: "blob" },
    publicJwk: { type: "text" },
    createdAt: { type: "datetime", length: 3 },
    version: { type: "integer" },
  },
});

/** The client signing keys in the database. */
export class SigningKeyRepository {
  constructor(private readonly orm: MikroORM) {}

  /** Every key, newest (the one that signs) first. */
  async list(): Promise<SigningKeyRow[]> {
    return runOn(this.orm, async (em) =>
      (await em.find(SigningKeySchema, {}, { orderBy: { createdAt: "desc", kid: "desc" }, disableIdentityMap: true })).map((r) => ({
        ...r,
        privateCt: asBuffer(r.privateCt) as Buffer,
      })),
    );
  }

  async insert(row: SigningKeyRow): Promise<void> {
    await runOn(this.orm, (em) => em.insert(SigningKeySchema, row));
  }

  /** Deletes these keys (retired by a rotation); returns how many. */
  async delete(kids: string[]): Promise<number> {
    if (kids.length === 0) return 0;
    return runOn(this.orm, (em) => em.nativeDelete(SigningKeySchema, { kid: { $in: kids } }));
  }

  /** Rewrites a key's ciphertext if it is still at `version`; false when another write came first. */
  async reseal(kid: string, version: number, fields: Pick<SigningKeyRow, "keyId" | "privateCt">): Promise<boolean> {
    return runOn(this.orm, async (em) => (await em.nativeUpdate(SigningKeySchema, { kid, version }, { ...fields, version: version + 1 })) === 1);
  }
}
