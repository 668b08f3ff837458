import type { Config, ProviderConfig } from "../config.js";
import type { Logger } from "../logger.js";
import { createGuardedFetch } from "./guarded-fetch.js";
import type { FetchLike, ProviderTelemetry } from "./observed-fetch.js";
import { OutboundPolicy, type ResolveFn } from "./outbound-policy.js";
import { OidcProviderClient, ProviderRegistry, type ProviderClient } from "./provider-client.js";

/** The providers the service talks to, and how a client for one is made. */
export interface Providers {
  /** The YAML file's providers now; runtime providers and reloads change it. */
  readonly registry: ProviderRegistry;
  /** The outbound policy (config.outbound); a reload updates it. */
  readonly outbound: OutboundPolicy;
  /** The guarded fetch of a runtime provider's requests (`id` names it in logs); `insecure`: registered with allow_insecure_http. */
  runtimeFetch(id: string, insecure: boolean): FetchLike;
  readonly telemetry: ProviderTelemetry;
  /** A client for one provider, made the way start-up makes them. */
  client(provider: ProviderConfig): OidcProviderClient;
  /**
   * Discovery for these clients now, in the background (the YAML file's providers at start-up, a reload's new
   * ones): a failure is logged, and the first call that needs the metadata tries again. Cut off by close().
   */
  prefetch(clients: readonly ProviderClient[]): void;
  /** Closes the outbound connection pools. */
  close(): Promise<void>;
}

/**
 * The provider registry with a client for each provider of the configuration.
 * Every provider request leaves through a guarded fetch (guarded-fetch.ts):
 * runtime providers under the outbound policy, YAML providers exempt from its
 * address rules; all of them under its body cap.
 */
export function createProviders(
  config: Config,
  deps: { logger: Logger; fetch: FetchLike | undefined; resolve?: ResolveFn | undefined; telemetry: ProviderTelemetry },
): Providers {
  const { logger, telemetry } = deps;
  const outbound = new OutboundPolicy(config.outbound, deps.resolve);
  const guarded = (provider: string, exempt: boolean, insecureAllowed: boolean) =>
    createGuardedFetch({ policy: outbound, inner: deps.fetch, provider, exempt, insecureAllowed, logger });
  const runtimeFetch = (id: string, insecure: boolean) => guarded(id, false, insecure);
  const client = (p: ProviderConfig) =>
    new OidcProviderClient(p, config.refresh, logger, guarded(p.id, p.source !== "runtime", p.allowInsecureHttp), telemetry);
  const closing = new AbortController();
  const prefetch = (clients: readonly ProviderClient[]) => {
    for (const c of clients) void c.prefetch?.(closing.signal);
  };
  const close = () => {
    closing.abort();
    return outbound.close();
  };
  return { registry: new ProviderRegistry(config.providers.map(client)), outbound, runtimeFetch, telemetry, client, prefetch, close };
}
