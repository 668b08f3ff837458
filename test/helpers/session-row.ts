import type { SessionRow } from "../../src/db/session-entity.js";
import type { OpenTokens, TokenVault } from "../../src/sessions/token-vault.js";

/**
 * A full SessionRow built by hand around `tokens` sealed with `vault`: an
 * active, unleased session issued at `now` whose access token lives 300 s.
 * `fields` override any column.
 */
export function sessionRow(
  vault: TokenVault,
  owner: Pick<SessionRow, "id" | "userId" | "provider">,
  tokens: OpenTokens,
  { now = new Date(), ...fields }: Partial<SessionRow> & { now?: Date } = {},
): SessionRow {
  return {
    ...owner,
    ...vault.sealAll(owner, tokens),
    status: "active",
    tokenType: "Bearer",
    scope: "",
    accessExpiresAt: new Date(now.getTime() + 300_000),
    accessIssuedAt: now,
    idExpiresAt: null,
    refreshExpiresAt: null,
    createdAt: now,
    updatedAt: now,
    lastUsedAt: now,
    version: 1,
    leaseOwner: null,
    leaseUntil: null,
    lastErrorCode: null,
    lastErrorAt: null,
    reauthReason: null,
    subject: null,
    sid: null,
    resources: null,
    ...fields,
  };
}
