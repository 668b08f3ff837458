import type { Config } from "../config.js";
import type { Forwarding } from "../forward/create-forwarding.js";
import type { Logger } from "../logger.js";
import type { Providers } from "../providers/create-providers.js";
import type { Listeners } from "../rpc/create-listeners.js";
import { ConfigReloader, type ReloadTargets } from "./reloader.js";

/**
 * The reloader of what can change while serving (callers and rate limits,
 * the YAML file's providers, the log level, certificates), watching the
 * configuration's files. `load` reads the configuration as start-up did;
 * without it nothing reloads.
 */
export function createReloader(
  config: Config,
  deps: {
    load: (() => Config) | undefined;
    logger: Logger;
    providers: Providers;
    listeners: Listeners;
    forwarding?: Forwarding;
    webhooks?: ReloadTargets["webhooks"];
  },
): ConfigReloader {
  const { providers, listeners } = deps;
  return new ConfigReloader(config, deps.load, {
    logger: deps.logger,
    chain: listeners.chain,
    registry: providers.registry,
    makeProvider: providers.client,
    prefetch: providers.prefetch,
    outbound: providers.outbound,
    certificates: listeners.grpc.certificates,
    http: listeners.http,
    forward: deps.forwarding,
    webhooks: deps.webhooks,
  });
}
