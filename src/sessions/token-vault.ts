import type { KeyRing } from "../crypto/key-ring.js";
import { bindingFor, open, OpenError, seal, UnknownKeyError } from "../crypto/seal.js";
import type { SessionRow } from "../db/session-entity.js";
import { CorruptSessionError, KeyUnavailableError } from "./errors.js";

/** A session's tokens in clear; lives only in memory, briefly. */
export interface OpenTokens {
  access: string;
  refresh: string | undefined;
  id: string | undefined;
}

type Field = "access" | "refresh" | "id";
type Owner = Pick<SessionRow, "id" | "userId" | "provider">;

/** A row, or a head of one, with the columns needed to open its tokens. */
type SealedRow = Owner & Pick<SessionRow, "keyId" | "accessCt" | "idCt"> & { refreshCt?: Buffer | null };

/** The sealed columns of a row. */
export type SealedTokens = Pick<SessionRow, "keyId" | "accessCt" | "refreshCt" | "idCt">;

const AAD_VERSION = "tokenservice.v1/session";
const AUDIENCE_AAD = "tokenservice.v1/audience";

/**
 * Seals and opens a session's tokens. Each ciphertext's AAD binds it to the
 * session id, user id, provider and column, so a ciphertext copied into
 * another row or column does not open.
 */
export class TokenVault {
  constructor(private readonly ring: KeyRing) {}

  /** The id of the key new writes use. */
  get primaryKeyId(): string {
    return this.ring.primary.id;
  }

  hasKey(keyId: string): boolean {
    return this.ring.get(keyId) !== undefined;
  }

  private aad(owner: Owner, field: Field): Buffer {
    return bindingFor([AAD_VERSION, owner.id, owner.userId, owner.provider, field]);
  }

  /** Seals all tokens under the primary key. */
  sealAll(owner: Owner, tokens: OpenTokens): SealedTokens {
    const access = seal(this.ring, tokens.access, this.aad(owner, "access"));
    return {
      keyId: access.keyId,
      accessCt: access.blob,
      refreshCt: tokens.refresh === undefined ? null : seal(this.ring, tokens.refresh, this.aad(owner, "refresh")).blob,
      idCt: tokens.id === undefined ? null : seal(this.ring, tokens.id, this.aad(owner, "id")).blob,
    };
  }

  /** Opens one column; undefined when the column is empty (or, for a head, not read). */
  openField(row: SealedRow, field: Field): string | undefined {
    const blob = field === "access" ? row.accessCt : field === "refresh" ? row.refreshCt : row.idCt;
    if (blob === null || blob === undefined) return undefined;
    try {
      return open(this.ring, row.keyId, blob, this.aad(row, field));
    } catch (err) {
      if (err instanceof UnknownKeyError) throw new KeyUnavailableError(row.keyId, { cause: err });
      if (err instanceof OpenError) throw new CorruptSessionError({ cause: err });
      throw err;
    }
  }

  /** Seals an audience token, bound to its session and resource. */
  sealAudience(sessionId: string, resource: string, token: string): { keyId: string; blob: Buffer } {
    return seal(this.ring, token, bindingFor([AUDIENCE_AAD, sessionId, resource]));
  }

  openAudience(row: { sessionId: string; resource: string; keyId: string; accessCt: Buffer }): string {
    try {
      return open(this.ring, row.keyId, row.accessCt, bindingFor([AUDIENCE_AAD, row.sessionId, row.resource]));
    } catch (err) {
      if (err instanceof UnknownKeyError) throw new KeyUnavailableError(row.keyId, { cause: err });
      if (err instanceof OpenError) throw new CorruptSessionError({ cause: err });
      throw err;
    }
  }

  openAll(row: SessionRow): OpenTokens {
    return {
      access: this.openField(row, "access") ?? "",
      refresh: this.openField(row, "refresh"),
      id: this.openField(row, "id"),
    };
  }
}
