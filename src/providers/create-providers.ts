import type { Config, ProviderConfig } from "../config.js";
import type { Logger } from "../logger.js";
import type { FetchLike, ProviderTelemetry } from "./observed-fetch.js";
import { OidcProviderClient, ProviderRegistry } from "./provider-client.js";

/** The providers the service talks to, and how a client for one is made. */
export interface Providers {
  /** The YAML file's providers now; runtime providers and reloads change it. */
  readonly registry: ProviderRegistry;
  /** The fetch every provider request goes through (undefined: the global one). */
  readonly fetch: FetchLike | undefined;
  readonly telemetry: ProviderTelemetry;
  /** A client for one provider, made the way start-up makes them. */
  client(provider: ProviderConfig): OidcProviderClient;
}

/** The provider registry with a client for each provider of the configuration. */
export function createProviders(config: Config, deps: { logger: Logger; fetch: FetchLike | undefined; telemetry: ProviderTelemetry }): Providers {
  const { logger, fetch, telemetry } = deps;
  const client = (p: ProviderConfig) => new OidcProviderClient(p, config.refresh, logger, fetch, telemetry);
  return { registry: new ProviderRegistry(config.providers.map(client)), fetch, telemetry, client };
}
