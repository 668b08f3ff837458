import { EntitySchema } from "@mikro-orm/core";

/** Session status as stored. */
export type SessionStatus = "active" | "reauth_required";

/**
 * One stored login. Tokens are only ever stored as AES-256-GCM ciphertext
 * (`*Ct`), each bound to this row's id, user, provider and column; everything
 * else stays queryable in clear.
 */
export interface SessionRow {
  id: string;
  userId: string;
  provider: string;
  status: SessionStatus;
  /** Key that encrypted every ciphertext of this row. */
  keyId: string;
  accessCt: Buffer;
  refreshCt: Buffer | null;
  idCt: Buffer | null;
  tokenType: string;
  scope: string;
  accessExpiresAt: Date;
  /** When the current access token was issued (store or refresh time); its lifetime sets the margin. */
  accessIssuedAt: Date;
  idExpiresAt: Date | null;
  refreshExpiresAt: Date | null;
  createdAt: Date;
  updatedAt: Date;
  lastUsedAt: Date;
  /** Bumped by every write that changes tokens or status: the compare-and-set guard. */
  version: number;
  /** Replica (and attempt) holding the refresh lease, if any. */
  leaseOwner: string | null;
  leaseUntil: Date | null;
  /** Last transient refresh failure (a code, never a message from upstream). */
  lastErrorCode: string | null;
  lastErrorAt: Date | null;
  /** The provider's error code that made this session need a new login. */
  reauthReason: string | null;
  /** When it started to need a new login. */
  reauthAt?: Date | null;
  /** Transient refresh failures in a row (0: none since the last success); > 0 shows as REFRESH_FAILING. */
  refreshFailures?: number;
  /** When the current run of failures began. */
  failingSince?: Date | null;
  /** The ID token's `sub` and `sid` (OpenID Connect), for back-channel logout. */
  subject: string | null;
  sid: string | null;
  /** RFC 8707 resources granted at login, as a JSON array of URIs; null: none. */
  resources: string | null;
  /** When its step-ups of the last hour started (JSON array of epoch ms; the limit's count); null: none. */
  stepUps?: string | null;
  /**
   * When the background refresher refreshes it if it was used recently: the
   * access token's expiry less the lead (written with each token; null: use
   * the expiry itself).
   */
  refreshAt?: Date | null;
  /**
   * When it is refreshed even unused (keep-alive, and ahead of a known
   * refresh-token expiry), written with each token; null: not scheduled yet
   * (then its last token write, `accessIssuedAt`, counts).
   */
  keepAliveAt?: Date | null;
}

export const SessionSchema = new EntitySchema<SessionRow>({
  name: "Session",
  tableName: "sessions",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    userId: { type: "string", length: 256 },
    provider: { type: "string", length: 64 },
    status: { type: "string", length: 16 },
    keyId: { type: "string", length: 64 },
    accessCt: { type: "blob" },
    refreshCt: { type: "blob", nullable: true },
    idCt: { type: "blob", nullable: true },
    tokenType: { type: "string", length: 64 },
    scope: { type: "text" },
    accessExpiresAt: { type: "datetime", length: 3 },
    accessIssuedAt: { type: "datetime", length: 3 },
    idExpiresAt: { type: "datetime", length: 3, nullable: true },
    refreshExpiresAt: { type: "datetime", length: 3, nullable: true },
    createdAt: { type: "datetime", length: 3 },
    updatedAt: { type: "datetime", length: 3 },
    lastUsedAt: { type: "datetime", length: 3 },
    version: { type: "integer" },
    leaseOwner: { type: "string", length: 128, nullable: true },
    leaseUntil: { type: "datetime", length: 3, nullable: true },
    lastErrorCode: { type: "string", length: 64, nullable: true },
    lastErrorAt: { type: "datetime", length: 3, nullable: true },
    reauthReason: { type: "string", length: 64, nullable: true },
    reauthAt: { type: "datetime", length: 3, nullable: true },
    refreshFailures: { type: "integer", default: 0 },
    failingSince: { type: "datetime", length: 3, nullable: true },
    subject: { type: "string", length: 255, nullable: true },
    sid: { type: "string", length: 255, nullable: true },
    resources: { type: "text", nullable: true },
    stepUps: { type: "text", nullable: true },
    refreshAt: { type: "datetime", length: 3, nullable: true },
    keepAliveAt: { type: "datetime", length: 3, nullable: true },
  },
  indexes: [
    { name: "sessions_user_provider_created_idx", properties: ["userId", "provider", "createdAt"] },
    { name: "sessions_status_access_expires_idx", properties: ["status", "accessExpiresAt"] },
    { name: "sessions_provider_sid_idx", properties: ["provider", "sid"] },
    { name: "sessions_provider_subject_idx", properties: ["provider", "subject"] },
    // The background refresher's batch claims: sessions due, and the live leases it counts per provider.
    { name: "sessions_status_refresh_at_idx", properties: ["status", "refreshAt"] },
    { name: "sessions_status_keep_alive_at_idx", properties: ["status", "keepAliveAt"] },
    { name: "sessions_provider_lease_until_idx", properties: ["provider", "leaseUntil"] },
  ],
});

/**
 * What GetToken needs of a session: the row without its refresh token (which
 * only the refresh path reads). `refreshable` says whether one is stored.
 */
export interface SessionHead
  extends Pick<
    SessionRow,
    | "id"
    | "userId"
    | "provider"
    | "status"
    | "keyId"
    | "accessCt"
    | "idCt"
    | "tokenType"
    | "scope"
    | "accessExpiresAt"
    | "accessIssuedAt"
    | "idExpiresAt"
    | "lastUsedAt"
    | "version"
    | "reauthReason"
    | "leaseOwner"
    | "leaseUntil"
    | "resources"
  > {
  refreshable: boolean;
}

/** The head of a full row. */
export function headOf(row: SessionRow): SessionHead {
  return {
    id: row.id,
    userId: row.userId,
    provider: row.provider,
    status: row.status,
    keyId: row.keyId,
    accessCt: row.accessCt,
    idCt: row.idCt,
    refreshable: row.refreshCt !== null,
    tokenType: row.tokenType,
    scope: row.scope,
    accessExpiresAt: row.accessExpiresAt,
    accessIssuedAt: row.accessIssuedAt,
    idExpiresAt: row.idExpiresAt,
    lastUsedAt: row.lastUsedAt,
    version: row.version,
    reauthReason: row.reauthReason,
    leaseOwner: row.leaseOwner,
    leaseUntil: row.leaseUntil,
    resources: row.resources,
  };
}

/** A blob column as a Buffer: drivers differ (libsql returns ArrayBuffer, pg a Buffer). */
export function asBuffer(v: unknown): Buffer | null {
  if (v === null || v === undefined) return null;
  if (Buffer.isBuffer(v)) return v;
  if (v instanceof ArrayBuffer) return Buffer.from(v);
  if (ArrayBuffer.isView(v)) return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
  throw new TypeError("unexpected blob type from the database driver");
}

/** The RFC 8707 resources a session was granted (its `resources` column, a JSON array), or none. */
export function grantedResources(resources: string | null): string[] {
  if (!resources) return [];
  try {
    const list: unknown = JSON.parse(resources);
    return Array.isArray(list) ? list.filter((r): r is string => typeof r === "string") : [];
  } catch {
    return [];
  }
}
