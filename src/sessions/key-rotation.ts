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
 * Pages through the rows not under the primary key in id order (`page`
 * returns those after an id), re-seals each (`reseal`: false when a replica
 * changed the row meanwhile) and tallies. A row whose key is not configured,
 * or whose ciphertext fails authentication, is counted and left as it is.
 */
async function rotateRows<R extends { id: string; keyId: string }>(
  page: (afterId: string) => Promise<R[]>,
  reseal: (row: R) => Promise<boolean>,
  onBatch?: (done: RotationReport) => void,
): Promise<RotationReport> {
  const report: RotationReport = { rotated: 0, changedMeanwhile: 0, missingKeys: new Map(), corrupt: 0 };
  let after = "";
  for (;;) {
    const rows = await page(after);
    if (rows.length === 0) break;
    after = rows[rows.length - 1]!.id;
    for (const row of rows) {
      let done: boolean;
      try {
        done = await reseal(row);
      } catch (err) {
        if (err instanceof KeyUnavailableError) report.missingKeys.set(row.keyId, (report.missingKeys.get(row.keyId) ?? 0) + 1);
        else if (err instanceof CorruptSessionError) report.corrupt++;
        else throw err;
        continue;
      }
      if (done) report.rotated++;
      else report.changedMeanwhile++;
    }
    onBatch?.(report);
  }
  return report;
}

/**
 * Re-encrypts every session not under the primary key, in batches, each row
 * with a compare-and-set on its version: safe while replicas serve (a row they
 * refresh meanwhile is simply skipped, as their write already used the
 * primary key) and resumable (it only ever looks at rows not yet rotated).
 */
export function rotateKeys(
  repo: SessionRepository,
  vault: TokenVault,
  options: { batchSize: number; onBatch?: (done: RotationReport) => void },
): Promise<RotationReport> {
  return rotateRows(
    (after) => repo.findNotUnderKey(vault.primaryKeyId, after, options.batchSize),
    (row) => repo.reencrypt(row.id, row.version, vault.sealAll(row, vault.openAll(row)), new Date()),
    options.onBatch,
  );
}

/**
 * Re-encrypts every audience token not under the primary key. A token that a
 * refresh replaced meanwhile is skipped (its new seal used the primary key).
 */
export function rotateAudienceKeys(
  repo: AudienceTokenRepository,
  vault: TokenVault,
  options: { batchSize: number },
): Promise<RotationReport> {
  return rotateRows(
    (after) => repo.findNotUnderKey(vault.primaryKeyId, after, options.batchSize),
    (row) => {
      const sealed = vault.sealAudience(row.sessionId, row.resource, vault.openAudience(row));
      return repo.reseal(row, { keyId: sealed.keyId, accessCt: sealed.blob });
    },
  );
}
