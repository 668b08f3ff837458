import type { MikroORM } from "@mikro-orm/core";
import { pino } from "pino";
import { resolveKeyRing } from "../crypto/resolve-key-ring.js";
import type { Config } from "../config.js";
import { migrateUp, openOrm } from "../db/orm.js";
import { SessionRepository } from "../db/session-repository.js";
import type { KeyRing } from "../crypto/key-ring.js";
import { createLogger } from "../logger.js";
import { TokenVault } from "../sessions/token-vault.js";

/** The database and keys, opened for a one-off command (migrations applied first). */
export interface Store {
  orm: MikroORM;
  repo: SessionRepository;
  vault: TokenVault;
  keyRing: KeyRing;
  close(): Promise<void>;
}

export async function openStore(config: Config): Promise<Store> {
  // Warnings (such as the generated key file) go to stderr, keeping stdout for the command's output.
  const logger = createLogger("warn", pino.destination({ dest: 2, sync: true }));
  const keyRing = resolveKeyRing(config, logger);
  const vault = new TokenVault(keyRing);
  const orm = await openOrm(config.database);
  try {
    await migrateUp(orm, config.database);
  } catch (err) {
    await orm.close(true);
    throw err;
  }
  const repo = new SessionRepository(orm, config.database.kind);
  return {
    orm,
    repo,
    vault,
    keyRing,
    close: async () => {
      await repo.close();
      await orm.close(true);
    },
  };
}
