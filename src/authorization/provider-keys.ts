import type { ProviderRepository } from "../db/provider-repository.js";
import type { SecretVault } from "./secret-vault.js";

export interface ProviderRotationReport {
  rotated: number;
  /** Changed by a replica between our read and our write: run again. */
  changedMeanwhile: number;
  /** Key id → providers sealed with a key that is not configured. */
  missingKeys: Map<string, number>;
}

/**
 * Re-seals the client secret and registration access token of every runtime
 * provider not under the primary key, each with a compare-and-set on its
 * version (as sessions are rotated).
 */
export async function rotateProviderKeys(repo: ProviderRepository, vault: SecretVault): Promise<ProviderRotationReport> {
  const report: ProviderRotationReport = { rotated: 0, changedMeanwhile: 0, missingKeys: new Map() };
  for (const row of await repo.listNotUnderKey(vault.primaryKeyId)) {
    if (!vault.hasKey(row.keyId)) {
      report.missingKeys.set(row.keyId, (report.missingKeys.get(row.keyId) ?? 0) + 1);
      continue;
    }
    const reseal = (column: string, blob: Buffer | null) =>
      blob === null ? null : vault.seal("provider", row.id, column, vault.open("provider", row.id, column, row.keyId, blob)).blob;
    const done = await repo.reseal(row.id, row.version, {
      keyId: vault.primaryKeyId,
      clientSecretCt: reseal("client_secret", row.clientSecretCt),
      registrationTokenCt: reseal("registration_access_token", row.registrationTokenCt),
    });
    if (done) report.rotated++;
    else report.changedMeanwhile++;
  }
  return report;
}
