import type { Config } from "../config.js";
import type { KeyRing } from "../crypto/key-ring.js";
import type { Store } from "../db/create-store.js";
import { ProviderRepository } from "../db/provider-repository.js";
import { StepUpRepository } from "../db/step-up-repository.js";
import type { Logger } from "../logger.js";
import type { Providers } from "../providers/create-providers.js";
import { PeriodicTask } from "../refresh/periodic.js";
import type { SessionWaiter } from "../refresh/waiter.js";
import type { Sessions } from "../sessions/create-sessions.js";
import { SigningKeyRepository } from "../db/signing-key-repository.js";
import { TokenVault } from "../sessions/token-vault.js";
import { BackchannelLogout } from "./backchannel-logout.js";
import { ClientSigningKeys } from "./client-keys.js";
import { clientMetadataDocument, type ClientMetadataDocument } from "./client-metadata.js";
import { CodeFlow } from "./code-flow.js";
import { ProviderAdmin } from "./provider-admin.js";
import { SecretVault } from "./secret-vault.js";
import { StepUps } from "./step-up.js";

/** How often a replica re-reads the runtime providers even without a notification (the channel may be down, or SQLite has none). */
const PROVIDER_RELOAD_MS = 10_000;

export interface Authorization {
  admin: ProviderAdmin;
  /** The client ID metadata document the HTTP listener serves, if any. */
  clientDocument: ClientMetadataDocument | undefined;
  /** The client signing keys (private_key_jwt), if that is the document's method. */
  signingKeys: ClientSigningKeys | undefined;
  codeFlow: CodeFlow;
  logout: BackchannelLogout;
  /** Re-reads the runtime providers now and then. */
  reloadTask: PeriodicTask;
  /** Starts the reload task. */
  start(): void;
  /** Stops the reload task. */
  close(): Promise<void>;
}

/**
 * The OAuth client the service runs itself: runtime providers (loaded into
 * `registry` now, and again whenever any replica announces a change), the
 * authorization code flow, and back-channel logout.
 */
export async function createAuthorization(
  config: Config,
  deps: { store: Store; keyRing: KeyRing; providers: Providers; sessions: Sessions; waiter: SessionWaiter; logger: Logger },
): Promise<Authorization> {
  const { store, providers, logger } = deps;
  const { users } = deps.sessions;
  const vault = new SecretVault(deps.keyRing);
  // Refuses start-up when the document would be too large.
  const clientDocument = clientMetadataDocument(config.publicUrl, config.clientMetadata);
  const signingKeys = clientDocument?.authMethod === "private_key_jwt" ? new ClientSigningKeys(new SigningKeyRepository(store.orm), vault, logger) : undefined;
  // The first key is made when private_key_jwt is first configured.
  await signingKeys?.ensure();
  const admin = new ProviderAdmin({
    repo: new ProviderRepository(store.orm, store.events),
    sessions: store.sessions,
    registry: providers.registry,
    vault,
    users,
    announce: () => deps.waiter.notifyProviders(),
    refresh: config.refresh,
    fetchFor: providers.runtimeFetch,
    outbound: providers.outbound,
    telemetry: providers.telemetry,
    logger,
    makeClient: providers.client,
    startedAt: new Date(),
    clientDocument,
    signingKeys,
    publicUrl: config.publicUrl,
  });
  await admin.reload();
  providers.registry.setReregistration((stale) => admin.reregister(stale));
  // Runtime providers and the signing keys (a `keys rotate` announces them as a provider change).
  const reload = () => Promise.all([admin.reload(), signingKeys?.load()]).then(() => undefined);
  deps.waiter.subscribe({
    changed: () => undefined,
    flush: () => undefined,
    providers: () => void reload().catch(() => undefined),
  });
  const reloadTask = new PeriodicTask("provider reload", PROVIDER_RELOAD_MS, reload, logger);
  const providerTimeoutMs = config.refresh.providerTimeoutMs;
  return {
    admin,
    clientDocument,
    signingKeys,
    codeFlow: new CodeFlow({
      repo: store.authorizations,
      registry: providers.registry,
      vault,
      sessions: deps.sessions.service,
      stepUps: new StepUps({
        sessions: store.sessions,
        stepUps: new StepUpRepository(store.orm, store.events),
        vault: new TokenVault(deps.keyRing),
        waiter: deps.waiter,
        users,
        maxPerHour: config.authorization.maxStepUpsPerHour,
        leaseMs: config.refresh.leaseMs,
        providerTimeoutMs,
        logger,
      }),
      stateTtlMs: config.authorization.stateTtlMs,
      providerTimeoutMs,
      logger,
    }),
    logout: new BackchannelLogout({ registry: providers.registry, users, providerTimeoutMs, logger }),
    reloadTask,
    start: () => reloadTask.start(),
    close: () => reloadTask.stop(),
  };
}
