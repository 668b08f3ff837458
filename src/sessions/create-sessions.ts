import type { Config } from "../config.js";
import type { Store } from "../db/create-store.js";
import type { Logger } from "../logger.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import type { Refresh } from "../refresh/create-refresh.js";
import type { Spans } from "../tracing/spans.js";
import { SessionCache } from "./session-cache.js";
import { SessionService } from "./session-service.js";
import type { TokenVault } from "./token-vault.js";
import { UserSessions } from "./user-sessions.js";

/** The domain: sessions (store, get, revoke), their cache, and a user's sessions. */
export interface Sessions {
  readonly cache: SessionCache;
  readonly service: SessionService;
  readonly users: UserSessions;
  /** Writes the session uses not yet written (before the store closes). */
  close(): Promise<void>;
}

/**
 * The session service over the store and the refresh engine. The cache
 * follows changes made here and, through the channel, on other replicas; a
 * login that needs renewing takes its audience tokens with it, whichever
 * refresh found out.
 */
export function createSessions(
  config: Config,
  deps: { store: Store; vault: TokenVault; registry: ProviderRegistry; refresh: Refresh; logger: Logger; spans: Spans },
): Sessions {
  const { store, vault, registry, logger } = deps;
  const { waiter, coordinator, audiences } = deps.refresh;
  const cache = new SessionCache(config.cache, store.channel ? store.channel.connected : true);
  waiter.subscribe({
    changed: (ref) => cache.invalidateRef(ref),
    flush: () => cache.flush(),
    channel: (connected) => cache.setOnline(connected),
  });
  const service = new SessionService(store.sessions, store.reader, cache, vault, registry, coordinator, audiences, logger, {
    lastUsedResolutionMs: config.lastUsedResolutionMs,
    lastUsedBatch: config.lastUsedBatch,
    spans: deps.spans,
  });
  const users = new UserSessions(store.sessions, vault, registry, coordinator, store.audiences, logger, {
    providerTimeoutMs: config.refresh.providerTimeoutMs,
  });
  coordinator.onOutcome((e) => {
    if (e.outcome === "reauth_required") void users.dropAudienceTokens(e.row);
  });
  audiences.onOutcome((e) => {
    if (e.outcome === "reauth_required") void users.dropAudienceTokens({ id: e.sessionId, provider: e.provider });
  });
  return { cache, service, users, close: () => service.close() };
}
