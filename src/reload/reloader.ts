import { createSecureContext } from "node:tls";
import { isDeepStrictEqual } from "node:util";
import { ConfigError, type Config, type ProviderConfig, type WebhooksConfig } from "../config.js";
import type { ForwardConfig } from "../forward/config.js";
import { errSummary, type Logger } from "../logger.js";
import type { OutboundPolicy } from "../providers/outbound-policy.js";
import type { ProviderClient, ProviderRegistry } from "../providers/provider-client.js";
import { warnScopesNotSentOnRefresh } from "../providers/refresh-scope.js";
import { CallerDirectory } from "../rpc/auth.js";
import type { CertificateSource } from "../rpc/certificate-source.js";
import type { RpcChain } from "../rpc/chain.js";
import type { HttpListener } from "../rpc/http-server.js";
import { FileWatcher, type FileWatchOptions } from "./file-watch.js";
import { planReload, type NameChanges, type ReloadPlan } from "./plan.js";

/** The running parts a reload changes. */
export interface ReloadTargets {
  logger: Logger;
  chain: RpcChain;
  registry: ProviderRegistry;
  /** The outbound policy: a reload applies config.outbound. */
  outbound: OutboundPolicy;
  /** A client for a provider of the YAML file (added or changed). */
  makeProvider(config: ProviderConfig): ProviderClient;
  /** Discovery for new clients, in the background (Providers.prefetch). */
  prefetch?(clients: readonly ProviderClient[]): void;
  /** The gRPC listener's certificate material, when it speaks TLS. */
  certificates: CertificateSource | undefined;
  http: HttpListener | undefined;
  /** The forwarding proxy: a reload applies config.forward. */
  forward?: { update(config: ForwardConfig): void };
  /** The webhook dispatcher: a reload applies config.webhooks. */
  webhooks?: { update(config: WebhooksConfig): void };
}

/** How one reload went. */
export interface ReloadResult {
  /** False when the new configuration was refused; the old one stays in effect. */
  ok: boolean;
  /** Whether anything took effect. */
  changed: boolean;
  /** Why it was refused: names the field, never holds a secret. */
  error?: string;
}

/** The line every refused reload writes (checks and operators look for it). */
export const RELOAD_FAILED = "configuration reload failed; the old configuration is kept";

/**
 * Re-reads the configuration on demand (SIGHUP, through App.reload) and when
 * its files change on disk, and applies what can change while serving:
 * callers and their rate limits, the YAML file's providers, the log level
 * and the listeners' certificates. The new configuration is loaded and
 * validated whole, exactly as at start-up, before anything is applied, so a
 * bad file changes nothing. Reloads run one at a time.
 */
export class ConfigReloader {
  private current: Config;
  private queue: Promise<unknown> = Promise.resolve();
  private readonly watcher: FileWatcher | undefined;

  /**
   * `load` reads and validates the configuration as start-up did; without
   * it, or without a configuration file, there is nothing to reload.
   */
  constructor(
    initial: Config,
    private readonly load: (() => Config) | undefined,
    private readonly t: ReloadTargets,
    watchOptions?: FileWatchOptions,
  ) {
    this.current = initial;
    if (load && initial.configFile) {
      this.watcher = new FileWatcher(() => void this.reload("file change"), t.logger, watchOptions);
      this.queue = this.startWatching(this.watcher, load).catch((err: unknown) =>
        t.logger.error({ err: errSummary(err) }, "configuration file watch failed to start; SIGHUP still reloads"),
      );
    }
  }

  /** The configuration in effect now. */
  get config(): Config {
    return this.current;
  }

  /** Loads the configuration again and applies it, after any reload already running; never throws. */
  reload(trigger: string): Promise<ReloadResult> {
    const run = this.queue.then(() =>
      this.reloadNow(trigger).catch((err: unknown) => {
        this.t.logger.error({ trigger, err: errSummary(err) }, "configuration reload failed unexpectedly");
        return { ok: false, changed: false, error: errSummary(err).name };
      }),
    );
    this.queue = run.catch(() => undefined);
    return run;
  }

  /**
   * Takes the files' content as the watch's baseline. Start-up read them a
   * while ago (before the database was opened): if they changed since, that
   * change is applied now, like any other.
   */
  private async startWatching(watcher: FileWatcher, load: () => Config): Promise<void> {
    const files = this.current.files;
    watcher.watch(files, await watcher.snapshot(files));
    let same: boolean;
    try {
      const plan = planReload(this.current, load());
      same = !plan.changed && plan.needsRestart.length === 0 && isDeepStrictEqual(plan.config.files, files);
    } catch {
      same = false;
    }
    if (!same) await this.reloadNow("file change");
  }

  /** Stops watching the files. */
  close(): void {
    this.watcher?.close();
  }

  private async reloadNow(trigger: string): Promise<ReloadResult> {
    const { logger } = this.t;
    if (!this.current.configFile) {
      logger.info({ trigger }, "configuration reload: no configuration file (TOKEN_SERVICE_CONFIG is not set), nothing to reload; still serving");
      return { ok: true, changed: false };
    }
    if (!this.load) {
      logger.info({ trigger }, "configuration reload: this service was started without a way to re-read its configuration; still serving");
      return { ok: true, changed: false };
    }
    const before = this.current.files;
    const snap = await this.watcher?.snapshot(before);
    let next: Config;
    try {
      next = this.load();
    } catch (err) {
      // The bad content is not retried until the files change again.
      if (snap !== undefined) this.watcher?.watch(before, snap);
      return this.refused(trigger, err);
    }
    const plan = planReload(this.current, next);
    if (plan.tls) {
      try {
        // A TLS context is built from the material first, whichever listeners are on: it throws before anything changed.
        const { cert, key, clientCa } = plan.tls.material;
        createSecureContext({ cert, key, ...(clientCa ? { ca: clientCa } : {}) });
        this.t.http?.setCertificates(plan.tls.material);
        this.t.certificates?.update(plan.tls.material);
      } catch (err) {
        return this.refused(trigger, new ConfigError(`tls: the new certificate and key cannot be used (${errSummary(err).code ?? "error"})`));
      }
    }
    this.applyProviders(next.providers);
    if (plan.outbound) this.t.outbound.update(plan.config.outbound);
    if (plan.forwardChanged) this.t.forward?.update(plan.config.forward);
    this.t.webhooks?.update(plan.config.webhooks);
    this.t.chain.setCallers(new CallerDirectory(plan.config.callers, plan.config.userAssertion));
    this.current = plan.config;
    if (this.watcher) {
      const files = plan.config.files;
      this.watcher.watch(files, isDeepStrictEqual(files, before) && snap !== undefined ? snap : await this.watcher.snapshot(files));
    }
    // Reported at the old level, then the new level applies: a reload to `warn` still says what it did.
    this.report(trigger, plan);
    if (plan.logLevel) logger.level = plan.logLevel.to;
    return { ok: true, changed: plan.changed };
  }

  /** The YAML file's providers: unchanged ones keep their client (and its discovery cache); calls in flight finish on the client they hold. */
  private applyProviders(providers: ProviderConfig[]): void {
    const { registry } = this.t;
    const made: ProviderClient[] = [];
    const clients = providers.map((p) => {
      const existing = registry.isConfigured(p.id) ? registry.get(p.id) : undefined;
      if (existing && isDeepStrictEqual(existing.config, p)) return existing;
      const client = this.t.makeProvider(p);
      made.push(client);
      return client;
    });
    registry.setConfigured(clients);
    if (made.length > 0) this.t.prefetch?.(made);
  }

  private refused(trigger: string, err: unknown): ReloadResult {
    // ConfigError messages name the field and never hold a value; anything else is summarized by name and code.
    const summary = errSummary(err);
    const error = err instanceof ConfigError ? err.message : `${summary.name}${summary.code ? ` [${summary.code}]` : ""}`;
    this.t.logger.error({ trigger, configFile: this.current.configFile, error }, RELOAD_FAILED);
    return { ok: false, changed: false, error };
  }

  private report(trigger: string, plan: ReloadPlan): void {
    const { logger } = this.t;
    const some = (c: NameChanges) => (c.added.length + c.removed.length + c.changed.length > 0 ? c : undefined);
    const fields: Record<string, unknown> = {
      trigger,
      changed: plan.changed,
      callers: some(plan.callers),
      callerCount: plan.config.callers.length,
      userAssertion: plan.userAssertion ? "changed" : undefined,
      providers: some(plan.providers),
      providerCount: plan.config.providers.length,
      logLevel: plan.logLevel ? `${plan.logLevel.from} -> ${plan.logLevel.to}` : undefined,
      outbound: plan.outbound ? plan.config.outbound : undefined,
      forward: some(plan.forward),
      replayMaxBytes: plan.forwardChanged ? plan.config.forward.replayMaxBytes : undefined,
      // Names only: a webhook's secret never reaches the log.
      webhooks: some(plan.webhooks) ?? (plan.webhooks.settings ? "settings changed" : undefined),
      certificate: plan.tls?.certificate,
      clientCa: plan.tls?.clientCaChanged ? "replaced" : undefined,
      needsRestart: plan.needsRestart.length > 0 ? plan.needsRestart : undefined,
    };
    logger.info(fields, plan.changed ? "configuration reloaded" : "configuration reloaded: nothing changed");
    warnScopesNotSentOnRefresh(logger, plan.config.providers, trigger);
    for (const setting of plan.needsRestart) {
      logger.warn({ trigger, setting }, `configuration reload: ${setting} changed but needs a restart; the running value is kept`);
    }
    if (plan.providers.removed.length > 0) {
      logger.warn(
        { providers: plan.providers.removed },
        "configuration reload removed providers: their sessions cannot be refreshed until they are configured again",
      );
    }
  }
}
