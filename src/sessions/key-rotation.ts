import type { AudienceTokenRepository } from "../db/audience-repository.js";
import type { SessionRepository } from "../db/session-repository.js";
import { CorruptSessionError, KeyUnavailableError } from "./errors.js";
import type { TokenVault } from "./token-vault.js";

export interface RotationReport {
  /** Rows re-encrypted under the primary key. */
  rotated: number;
  /** Rows changed by a replica while we worked (a refresh writes under the primary key anyway); run again to finish any left. */
  changedMeanwhile: number;
  /** Rows whose key is not configured, by key id: they cannot be read, so they are left as they are. */
  missingKeys: Map<string, number>;
  /** Rows whose ciphertext fails authentication. */
  corrupt: number;
}

/**
 * Re-encrypts every session not under the primary key, in batches, each row
 * with a compare-and-set on its version: safe while replicas serve (a row they
 * refresh meanwhile is simply skipped, as their write already used the
 * primary key) and resumable (it only ever looks at rows not yet rotated).
 */
export async function rotateKeys(
  repo: SessionRepository,
  vault: TokenVault,
  options: { batchSize: number; onBatch?: (done: RotationReport) => void },
): Promise<RotationReport> {
  const report: RotationReport = { rotated: 0, changedMeanwhile: 0, missingKeys: new Map(), corrupt: 0 };
  let after = "";
  for (;;) {
    const rows = await repo.findNotUnderKey(vault.primaryKeyId, after, options.batchSize);
    if (rows.length === 0) break;
    after = rows[rows.length - 1]!.id;
    for (const row of rows) {
      if (!vault.hasKey(row.keyId)) {
        report.missingKeys.set(row.keyId, (report.missingKeys.get(row.keyId) ?? 0) + 1);
        continue;
      }
      let sealed;
      try {
        sealed = vault.sealAll(row, vault.openAll(row));
      } catch (err) {
        if (err instanceof CorruptSessionError) {
          report.corrupt++;
          continue;
        }
        throw err;
      }
      if (await repo.reencrypt(row.id, row.version, sealed, new Date())) report.rotated++;
      else report.changedMeanwhile++;
    }
    options.onBatch?.(report);
  }
  return report;
}

/**
 * Re-encrypts every audience token not under the primary key. A token that a
 * refresh replaced meanwhile is skipped (its new seal used the primary key).
 */
export async function rotateAudienceKeys(
  repo: AudienceTokenRepository,
  vault: TokenVault,
  options: { batchSize: number },
): Promise<RotationReport> {
  const report: RotationReport = { rotated: 0, changedMeanwhile: 0, missingKeys: new Map(), corrupt: 0 };
  let after = "";
  for (;;) {
    const rows = await repo.findNotUnderKey(vault.primaryKeyId, after, options.batchSize);
    if (rows.length === 0) break;
    after = rows[rows.length - 1]!.id;
    for (const row of rows) {
      let token: string;
      try {
        token = vault.openAudience(row);
      } catch (err) {
        if (err instanceof KeyUnavailableError) report.missingKeys.set(row.keyId, (report.missingKeys.get(row.keyId) ?? 0) + 1);
        else if (err instanceof CorruptSessionError) report.corrupt++;
        else throw err;
        continue;
      }
      const sealed = vault.sealAudience(row.sessionId, row.resource, token);
      if (await repo.reseal(row, { keyId: sealed.keyId, accessCt: sealed.blob })) report.rotated++;
      else report.changedMeanwhile++;
    }
  }
  return report;
}
