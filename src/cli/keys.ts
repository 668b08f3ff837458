import type { Writable } from "node:stream";
import { ConfigError, loadConfig } from "../config.js";
import { generateKeySpec } from "../crypto/key-ring.js";
import { CHANNEL } from "../db/pg-channel.js";
import { rotateAudienceKeys, rotateKeys } from "../sessions/key-rotation.js";
import { AudienceTokenRepository } from "../db/audience-repository.js";
import { rotateSigningKeys } from "../authorization/client-keys.js";
import { rotateProviderKeys } from "../authorization/provider-keys.js";
import { SigningKeyRepository } from "../db/signing-key-repository.js";
import { SecretVault } from "../authorization/secret-vault.js";
import { ProviderRepository } from "../db/provider-repository.js";
import { option } from "./args.js";
import { openStore } from "./store.js";


/** `keys generate | rotate | status`. */
export async function keysCommand(args: string[], env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  const sub = args[0];
  if (sub === "generate") {
    out.write(`${generateKeySpec(option(args, "--id"))}\n`);
    return 0;
  }
  if (sub !== "rotate" && sub !== "status") {
    throw new ConfigError(`keys: unknown subcommand "${sub ?? ""}" (use generate, rotate or status)`);
  }
  const store = await openStore(loadConfig(env));
  try {
    const primary = store.vault.primaryKeyId;
    if (sub === "status") {
      const counts = await store.repo.countByKey();
      out.write(`primary key: ${primary}\n`);
      if (counts.length === 0) out.write("no sessions stored\n");
      for (const { keyId, count } of counts) {
        const state = keyId === primary ? "primary" : store.vault.hasKey(keyId) ? "configured (rotate to retire it)" : "MISSING: these sessions cannot be read";
        out.write(`${keyId}\t${count} session${count === 1 ? "" : "s"}\t${state}\n`);
      }
      return counts.some((c) => !store.vault.hasKey(c.keyId)) ? 1 : 0;
    }
    const batchSize = Number(option(args, "--batch") ?? 500);
    if (!Number.isInteger(batchSize) || batchSize < 1) throw new ConfigError("--batch must be a positive integer");
    out.write(`re-encrypting every session under the primary key ${primary}, ${batchSize} per batch\n`);
    const report = await rotateKeys(store.repo, store.vault, {
      batchSize,
      onBatch: (r) => out.write(`  ${r.rotated} re-encrypted so far\n`),
    });
    await store.repo.broadcastFlush(CHANNEL);
    out.write(`done: ${report.rotated} re-encrypted, ${report.changedMeanwhile} changed by a replica meanwhile`);
    out.write(report.changedMeanwhile > 0 ? " (run again to finish them)\n" : "\n");
    for (const [keyId, count] of report.missingKeys) {
      out.write(`  ${count} under key ${keyId}, which is not configured: add it to TOKEN_SERVICE_ENCRYPTION_KEYS and run again\n`);
    }
    if (report.corrupt > 0) out.write(`  ${report.corrupt} failed integrity checks and were left as they are\n`);
    // Runtime providers' client secrets and registration access tokens move too.
    const providers = await rotateProviderKeys(new ProviderRepository(store.orm), new SecretVault(store.keyRing));
    if (providers.rotated > 0) await store.repo.notify(CHANNEL, "providers");
    out.write(`providers: ${providers.rotated} re-encrypted, ${providers.changedMeanwhile} changed meanwhile\n`);
    for (const [keyId, count] of providers.missingKeys) out.write(`  ${count} provider(s) under key ${keyId}, which is not configured\n`);
    // The client signing keys (private_key_jwt): a new one signs from now on, the last one stays published.
    const signing = await rotateSigningKeys(new SigningKeyRepository(store.orm), new SecretVault(store.keyRing));
    if (signing.added) {
      await store.repo.notify(CHANNEL, "providers");
      out.write(`client signing keys: ${signing.added} signs from now on; ${signing.retired.length} older key(s) retired\n`);
    }
    // Audience tokens (RFC 8707) are sealed per session and resource.
    const audiences = await rotateAudienceKeys(new AudienceTokenRepository(store.orm), store.vault, { batchSize });
    out.write(`audience tokens: ${audiences.rotated} re-encrypted, ${audiences.changedMeanwhile} refreshed meanwhile (already under ${primary})\n`);
    for (const [keyId, count] of audiences.missingKeys) out.write(`  ${count} audience token(s) under key ${keyId}, which is not configured\n`);
    if (audiences.corrupt > 0) out.write(`  ${audiences.corrupt} audience token(s) failed integrity checks and were left as they are\n`);
    const left =
      report.changedMeanwhile +
      report.corrupt +
      providers.changedMeanwhile +
      audiences.corrupt +
      [...report.missingKeys.values(), ...providers.missingKeys.values(), ...audiences.missingKeys.values()].reduce((a, b) => a + b, 0);
    if (left === 0) out.write(`every session, provider and audience token is under ${primary}: older keys can be removed from TOKEN_SERVICE_ENCRYPTION_KEYS\n`);
    return left === 0 ? 0 : 1;
  } finally {
    await store.close();
  }
}
