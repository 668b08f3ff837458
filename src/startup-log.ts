import type { Config } from "./config.js";
import type { KeyRing } from "./crypto/key-ring.js";
import type { Store } from "./db/create-store.js";
import { describeDatabase } from "./db/orm.js";
import type { Logger } from "./logger.js";
import type { ProviderRegistry } from "./providers/provider-client.js";
import { warnScopesNotSentOnRefresh } from "./providers/refresh-scope.js";
import type { RefreshCoordinator } from "./refresh/coordinator.js";
import { addressOf, type Listeners } from "./rpc/create-listeners.js";

/** The "token service listening" line, and warnings about what an operator most likely forgot. */
export function logStartup(
  logger: Logger,
  config: Config,
  parts: { store: Store; keyRing: KeyRing; registry: ProviderRegistry; coordinator: RefreshCoordinator; listeners: Listeners },
): void {
  const { store, keyRing, registry, listeners } = parts;
  const { grpc, http, admin } = listeners;
  const channel = store.channel;
  logger.info(
    {
      addr: addressOf(grpc),
      httpAddr: http ? addressOf(http) : "off",
      database: describeDatabase(config.database),
      migrationsApplied: store.migrationsApplied,
      providers: registry.ids(),
      keyIds: keyRing.ids(),
      primaryKeyId: keyRing.primary.id,
      replica: parts.coordinator.replicaId,
      changeChannel: channel ? (channel.connected ? "listening" : "reconnecting") : "none (single process)",
      backgroundRefresh: config.refresh.background.enabled,
      tls: config.tls ? (config.tls.clientCa ? "on, client certificates accepted" : "on") : "off",
      callers: config.callers.map((c) => c.name),
      reflection: config.reflection,
      admin: admin ? `${config.admin!.host}:${admin.port}` : "off",
      sweeper: config.sweeper.enabled,
      // Ids only: a webhook's URL may carry a token of the receiver's, and its secret never leaves the config.
      webhooks: config.webhooks.endpoints.map((w) => w.id),
    },
    "token service listening",
  );
  if (config.callers.length === 0) {
    logger.warn(
      { addr: addressOf(grpc), httpAddr: http ? addressOf(http) : "off" },
      "no callers configured: any local process may call every RPC; listening on loopback only",
    );
  }
  warnScopesNotSentOnRefresh(logger, config.providers, "startup");
  if (registry.ids().length === 0) {
    logger.warn("no providers configured (TOKEN_SERVICE_CONFIG): StoreSession will refuse every provider");
  }
}
