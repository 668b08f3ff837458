import type { App, AppOverrides } from "./app-types.js";
import { createAuthorization } from "./authorization/wiring.js";
import type { Config } from "./config.js";
import { resolveKeyRing } from "./crypto/resolve-key-ring.js";
import { createStore } from "./db/create-store.js";
import { createForwarding } from "./forward/create-forwarding.js";
import { createLogger, flushLog } from "./logger.js";
import { createHealth } from "./operability/create-health.js";
import { createMetrics } from "./operability/create-metrics.js";
import { createProviders } from "./providers/create-providers.js";
import { createRefresh } from "./refresh/create-refresh.js";
import { EventWatchers } from "./events/watchers.js";
import { createReloader } from "./reload/create-reloader.js";
import { createListeners, urlOf } from "./rpc/create-listeners.js";
import { useNodeUtf8Encoder } from "./rpc/utf8.js";
import { createSessions } from "./sessions/create-sessions.js";
import { TokenVault } from "./sessions/token-vault.js";
import { logStartup } from "./startup-log.js";
import { createTracing } from "./tracing/create-tracing.js";
import { closeInReverse, type Closeable } from "./util/close-in-reverse.js";
import { createWebhooks } from "./webhooks/create-webhooks.js";
import { eventsOutbox } from "./webhooks/outbox.js";

export type { App, AppOverrides } from "./app-types.js";
export { resolveKeyRing } from "./crypto/resolve-key-ring.js";

/**
 * Composition root. Builds the parts in the order they depend on each other
 * (tracing, keys, store, metrics, providers, refresh engine, sessions,
 * authorization, health, listeners, reloader), then starts the background
 * work. Nothing starts on import. `close()` closes the parts in reverse
 * order; when start-up fails, the parts built so far are closed the same way.
 */
export async function createApp(config: Config, overrides: AppOverrides = {}): Promise<App> {
  const logger = overrides.logger ?? createLogger(config.logLevel);
  useNodeUtf8Encoder();
  const tracing = createTracing(overrides.tracing, logger);
  const { spans } = tracing;
  const keyRing = resolveKeyRing(config, logger);
  const store = await createStore(config, logger);
  const parts: Closeable[] = [store];
  const built = <T extends Closeable>(part: T): T => {
    parts.push(part);
    return part;
  };
  try {
    const vault = new TokenVault(keyRing);
    const { metrics, telemetry, watch } = createMetrics({ store, spans });
    built(metrics);
    const providers = built(createProviders(config, { logger, fetch: overrides.fetch, resolve: overrides.resolve, telemetry }));
    const { registry } = providers;
    const refresh = built(createRefresh(config, { store, vault, registry, metrics, logger, replicaId: overrides.replicaId, spans }));
    // Closed after the listeners (no more calls) and before the store: the uses it holds are written first.
    const sessions = built(createSessions(config, { store, vault, registry, refresh, logger, spans }));
    const authorization = built(await createAuthorization(config, { store, keyRing, providers, sessions, waiter: refresh.waiter, logger }));
    const webhooks = built(createWebhooks(config, { store, outbound: providers.outbound, outbox: eventsOutbox(store.events, store.eventWake), metrics, logger, replicaId: refresh.coordinator.replicaId }));
    const health = built(createHealth({ repo: store.sessions, logger }));
    const watchers = new EventWatchers(store.events, store.eventWake, config.events);
    watch({ coordinator: refresh.coordinator, cache: sessions.cache, health, watchers });
    const forwarding = built(createForwarding(config, { sessions: sessions.service, metrics, spans }));
    const listeners = built(
      await createListeners(config, { sessions, authorization, watchers, deliveries: webhooks.deliveries, health: health.state, metrics, logger, spans, forward: forwarding.route }),
    );
    const reloader = built(createReloader(config, { load: overrides.loadConfig, logger, providers, listeners, forwarding, webhooks: webhooks.dispatcher }));
    for (const part of [health, refresh, authorization, webhooks]) part.start();
    providers.prefetch(registry.configuredClients());
    logStartup(logger, config, { store, keyRing, registry, coordinator: refresh.coordinator, listeners });

    const { grpc, http } = listeners;
    let closing: Promise<void> | undefined;
    return {
      get config() {
        return reloader.config;
      },
      logger,
      grpc,
      http,
      chain: listeners.chain,
      authorization,
      url: urlOf(grpc),
      httpUrl: http ? urlOf(http) : undefined,
      orm: store.orm,
      sessions: sessions.service,
      users: sessions.users,
      coordinator: refresh.coordinator,
      background: refresh.background,
      sweeper: refresh.sweeper,
      events: store.events,
      watchers,
      keyRing,
      cache: sessions.cache,
      health: health.state,
      metrics,
      adminPort: listeners.admin?.port,
      reload: (trigger = "reload") => reloader.reload(trigger),
      close() {
        closing ??= closeInReverse([tracing, ...parts]).then(() => {
          logger.info("shut down");
          // Written before the process exits, in order (the exit-time flush could overtake a write in flight).
          return flushLog(logger, 2000);
        });
        return closing;
      },
    };
  } catch (err) {
    await closeInReverse(parts).catch(() => undefined);
    throw err;
  }
}
