import { createHash } from "node:crypto";
import type { MikroORM } from "@mikro-orm/core";
import { AudienceTokenSchema, type AudienceTokenRow } from "./provider-entity.js";
import { asBuffer } from "./session-entity.js";
import { runOn } from "./session-repository.js";

/** The row id of a session's token for one resource. */
export function audienceTokenId(sessionId: string, resource: string): string {
  return createHash("sha256").update(`${sessionId}\u0000${resource}`).digest("hex");
}

function normalize(row: AudienceTokenRow | null): AudienceTokenRow | null {
  if (row) row.accessCt = asBuffer(row.accessCt) as Buffer;
  return row;
}

/** Audience tokens: a session's access token per RFC 8707 resource. */
export class AudienceTokenRepository {
  constructor(private readonly orm: MikroORM) {}

  async find(sessionId: string, resource: string): Promise<AudienceTokenRow | null> {
    return runOn(this.orm, async (em) =>
      normalize(await em.findOne(AudienceTokenSchema, { id: audienceTokenId(sessionId, resource) }, { disableIdentityMap: true })),
    );
  }

  /** Writes the token for its (session, resource), replacing the one held. */
  async upsert(row: AudienceTokenRow): Promise<void> {
    await runOn(this.orm, (em) =>
      em.upsert(AudienceTokenSchema, row, { onConflictFields: ["id"], onConflictAction: "merge", disableIdentityMap: true }),
    );
  }

  /** Deletes this token if no refresh replaced it since it was written (compare-and-set on updated_at). */
  async deleteIfUnchanged(row: Pick<AudienceTokenRow, "id" | "updatedAt">): Promise<void> {
    await runOn(this.orm, (em) => em.nativeDelete(AudienceTokenSchema, { id: row.id, updatedAt: row.updatedAt }));
  }

  async listForSessions(sessionIds: string[]): Promise<AudienceTokenRow[]> {
    if (sessionIds.length === 0) return [];
    return runOn(this.orm, async (em) =>
      (await em.find(AudienceTokenSchema, { sessionId: { $in: sessionIds } }, { disableIdentityMap: true })).map(
        (r) => normalize(r) as AudienceTokenRow,
      ),
    );
  }

  /** Deletes these sessions' audience tokens; returns them (for revocation at the provider). */
  async deleteForSessions(sessionIds: string[]): Promise<AudienceTokenRow[]> {
    if (sessionIds.length === 0) return [];
    return runOn(this.orm, async (em) => {
      const rows = (await em.find(AudienceTokenSchema, { sessionId: { $in: sessionIds } }, { disableIdentityMap: true })).map(
        (r) => normalize(r) as AudienceTokenRow,
      );
      if (rows.length > 0) await em.nativeDelete(AudienceTokenSchema, { id: { $in: rows.map((r) => r.id) } });
      return rows;
    });
  }

  /** Deletes audience tokens whose session is gone (revoked while a refresh was storing one), at most `limit`. */
  async deleteOrphans(limit: number): Promise<number> {
    return runOn(this.orm, async (em) => {
      // An anti-join, so live rows never hide orphans behind them; the same SQL on SQLite and PostgreSQL.
      const result: unknown = await em
        .getConnection()
        .execute(
          "delete from audience_tokens where id in (select a.id from audience_tokens a left join sessions s on s.id = a.session_id where s.id is null limit ?)",
          [limit],
          "run",
        );
      return (result as { affectedRows?: number }).affectedRows ?? 0;
    });
  }

  /** Audience tokens not sealed under `keyId`, in id order after `afterId` (key rotation). */
  async findNotUnderKey(keyId: string, afterId: string, limit: number): Promise<AudienceTokenRow[]> {
    return runOn(this.orm, async (em) =>
      (
        await em.find(AudienceTokenSchema, { keyId: { $ne: keyId }, id: { $gt: afterId } }, { orderBy: { id: "asc" }, limit, disableIdentityMap: true })
      ).map((r) => normalize(r) as AudienceTokenRow),
    );
  }

  /** Rewrites a token sealed anew, if no refresh replaced it meanwhile (compare-and-set on updated_at). */
  async reseal(row: AudienceTokenRow, sealed: { keyId: string; accessCt: Buffer }): Promise<boolean> {
    return runOn(this.orm, async (em) => {
      const n = await em.nativeUpdate(AudienceTokenSchema, { id: row.id, updatedAt: row.updatedAt }, sealed);
      return n > 0;
    });
  }
}

/**
 * The audience row key of a token derived from a session for an
 * enterprise-managed provider (ID-JAG). An RFC 8707 resource never has a
 * fragment, so this key never equals an ordinary audience token's resource.
 */
export function derivedTokenKey(provider: string, resource: string): string {
  return `${resource}#id-jag=${provider}`;
}

/** The enterprise-managed provider of a derived token's row key; undefined for an ordinary audience token. */
export function derivedTokenProvider(key: string): string | undefined {
  return /#id-jag=([^#]+)$/.exec(key)?.[1];
}
