import type { MikroORM } from "@mikro-orm/core";
import type { Config } from "../config.js";
import type { KeyRing } from "../crypto/key-ring.js";
import { ProviderRepository, type AuthorizationRepository } from "../db/provider-repository.js";
import type { SessionRepository } from "../db/session-repository.js";
import type { Logger } from "../logger.js";
import type { ProviderTelemetry } from "../providers/observed-fetch.js";
import { OidcProviderClient, type FetchLike, type ProviderRegistry } from "../providers/provider-client.js";
import { PeriodicTask } from "../refresh/periodic.js";
import type { SessionWaiter } from "../refresh/waiter.js";
import type { SessionService } from "../sessions/session-service.js";
import type { UserSessions } from "../sessions/user-sessions.js";
import { BackchannelLogout } from "./backchannel-logout.js";
import { CodeFlow } from "./code-flow.js";
import { ProviderAdmin } from "./provider-admin.js";
import { SecretVault } from "./secret-vault.js";

/** How often a replica re-reads the runtime providers even without a notification (the channel may be down, or SQLite has none). */
const PROVIDER_RELOAD_MS = 10_000;

export interface Authorization {
  admin: ProviderAdmin;
  codeFlow: CodeFlow;
  logout: BackchannelLogout;
  /** Re-reads the runtime providers now and then; stop it on shutdown. */
  reloadTask: PeriodicTask;
}

/**
 * The OAuth client the service runs itself: runtime providers (loaded into
 * `registry` now, and again whenever any replica announces a change), the
 * authorization code flow, and back-channel logout.
 */
export async function createAuthorization(deps: {
  orm: MikroORM;
  config: Config;
  keyRing: KeyRing;
  sessionsRepo: SessionRepository;
  authRepo: AuthorizationRepository;
  registry: ProviderRegistry;
  sessions: SessionService;
  users: UserSessions;
  waiter: SessionWaiter;
  fetch: FetchLike | undefined;
  telemetry: ProviderTelemetry;
  logger: Logger;
}): Promise<Authorization> {
  const { config, logger } = deps;
  const vault = new SecretVault(deps.keyRing);
  const admin = new ProviderAdmin({
    repo: new ProviderRepository(deps.orm),
    sessions: deps.sessionsRepo,
    registry: deps.registry,
    vault,
    users: deps.users,
    announce: () => deps.waiter.notifyProviders(),
    refresh: config.refresh,
    fetch: deps.fetch ?? fetch,
    telemetry: deps.telemetry,
    logger,
    makeClient: (c) => new OidcProviderClient(c, config.refresh, logger, deps.fetch, deps.telemetry),
    startedAt: new Date(),
  });
  await admin.reload();
  deps.waiter.subscribe({
    changed: () => undefined,
    flush: () => undefined,
    providers: () => void admin.reload().catch(() => undefined),
  });
  const reloadTask = new PeriodicTask("provider reload", PROVIDER_RELOAD_MS, () => admin.reload(), logger);
  const providerTimeoutMs = config.refresh.providerTimeoutMs;
  return {
    admin,
    codeFlow: new CodeFlow({
      repo: deps.authRepo,
      registry: deps.registry,
      vault,
      sessions: deps.sessions,
      stateTtlMs: config.authorization.stateTtlMs,
      providerTimeoutMs,
      logger,
    }),
    logout: new BackchannelLogout({ registry: deps.registry, repo: deps.authRepo, users: deps.users, providerTimeoutMs, logger }),
    reloadTask,
  };
}
