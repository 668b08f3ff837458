import { ConfigError, type Config } from "../config.js";
import type { Logger } from "../logger.js";
import { loadOrCreateKeyFile } from "./key-file.js";
import { parseKeyRing, type KeyRing } from "./key-ring.js";

/** The key ring from TOKEN_SERVICE_ENCRYPTION_KEYS, or on SQLite a generated key file. */
export function resolveKeyRing(config: Config, logger: Logger): KeyRing {
  if (config.encryptionKeys) return parseKeyRing(config.encryptionKeys);
  if (config.database.kind === "postgresql") {
    throw new ConfigError(
      "TOKEN_SERVICE_ENCRYPTION_KEYS is required with PostgreSQL (every replica needs the same keys). " +
        "Create one with `token-service keys generate` (in a checkout: `npm run --silent cli -- keys generate`).",
    );
  }
  const path = `${config.database.path}.keys`;
  const { ring, created } = loadOrCreateKeyFile(path);
  logger.warn(
    { keyFile: path, keyId: ring.primary.id, created },
    created
      ? "TOKEN_SERVICE_ENCRYPTION_KEYS is not set: generated an encryption key file (mode 0600) beside the database; back it up, sessions cannot be read without it"
      : "TOKEN_SERVICE_ENCRYPTION_KEYS is not set: using the key file beside the database",
  );
  return ring;
}
