import { setTimeout as sleep } from "node:timers/promises";
import type { ProviderRow } from "../db/provider-entity.js";
import type { ProviderRepository } from "../db/provider-repository.js";
import type { Logger } from "../logger.js";
import { discoverIssuer, discoverResource, registerClient, type DiscoveryOptions } from "../providers/discovery.js";
import { classifyProviderError } from "../providers/errors.js";
import type { ProviderClient, ProviderRegistry } from "../providers/provider-client.js";
import { applicationType } from "./registration-choice.js";
import type { SecretVault } from "./secret-vault.js";

/** A stored provider's registration as it changes when the client registers again. */
export type RegistrationFields = Pick<ProviderRow, "issuer" | "metadata" | "clientId" | "clientAuthMethod" | "keyId" | "clientSecretCt" | "registrationTokenCt">;

/**
 * Registers a dynamically registered provider's client again (RFC 7591),
 * with the redirect URIs and scopes it has. Discovery runs first, from the
 * protected resource when it was found from one: when the resource now names
 * another authorization server, the new client is registered there, since
 * credentials are kept per issuer. The new secrets are sealed for the row.
 */
export async function registerAgain(
  row: ProviderRow,
  deps: {
    vault: SecretVault;
    options: DiscoveryOptions;
    registration: DiscoveryOptions;
    /** The outbound policy's check of an authorization server a resource names. */
    precheck: (url: string) => Promise<void>;
    backchannelLogoutUri: string | undefined;
  },
): Promise<RegistrationFields> {
  let issuer = new URL(row.issuer);
  if (row.resourceUrl) {
    const resource = await discoverResource(new URL(row.resourceUrl), deps.options);
    await deps.precheck(resource.authorizationServers[0]!);
    issuer = new URL(resource.authorizationServers[0]!);
  }
  const server = await discoverIssuer(issuer, deps.options);
  const redirectUris = JSON.parse(row.redirectUris) as string[];
  const registered = await registerClient(
    new URL(server.metadata.issuer),
    server.algorithm,
    {
      redirectUris,
      authMethod: row.clientAuthMethod === "none" ? "none" : "client_secret_basic",
      scopes: JSON.parse(row.scopes) as string[],
      backchannelLogoutUri: deps.backchannelLogoutUri,
      applicationType: applicationType(redirectUris),
    },
    deps.registration,
  );
  const seal = (column: string, value: string | undefined) => (value === undefined ? null : deps.vault.seal("provider", row.id, column, value).blob);
  return {
    issuer: server.metadata.issuer,
    metadata: JSON.stringify({ ...server.metadata, openid: server.openid }),
    clientId: registered.clientId,
    clientAuthMethod: registered.authMethod,
    keyId: deps.vault.primaryKeyId,
    clientSecretCt: seal("client_secret", registered.clientSecret),
    registrationTokenCt: seal("registration_access_token", registered.registrationAccessToken),
  };
}

export interface ReregistrationDeps {
  repo: ProviderRepository;
  vault: SecretVault;
  logger: Logger;
  registry: ProviderRegistry;
  /** The row version behind a client, while it is the loaded one; undefined otherwise. */
  versionOf: (client: ProviderClient) => number | undefined;
  /** Re-reads the runtime providers into the registry. */
  reload: () => Promise<void>;
  /** Tells every replica that providers changed. */
  announce: () => Promise<void>;
  /** How a provider's discovery and registration requests go out. */
  outbound: (id: string, insecure: boolean) => { options: DiscoveryOptions; registration: DiscoveryOptions };
  precheck: (id: string, url: string) => Promise<void>;
  /** The service's public_url: the back-channel logout URI of the new client. */
  publicUrl: string | undefined;
  /** How long a replica waits for another's registration (its discovery and registration requests). */
  waitMs: number;
}

/**
 * Registering a dynamically registered provider's client again after
 * `invalid_client`. In this process the callers share one registration per
 * provider; across replicas the provider row's version is the coordinator:
 * the replica whose compare-and-set moves it on (the claim) registers and
 * stores the new client with a second compare-and-set; the others wait for
 * that (bounded) and reload it. A claim whose replica died before storing
 * is simply claimed again on the next `invalid_client`.
 */
export class Reregistration {
  private readonly inflight = new Map<string, Promise<ProviderClient | undefined>>();

  constructor(private readonly deps: ReregistrationDeps) {}

  /** The client to retry with once, or undefined when this one cannot register again (YAML, pre-registered, CIMD) or it failed. */
  run(stale: ProviderClient): Promise<ProviderClient | undefined> {
    if (stale.config.source !== "runtime" || stale.config.runtime?.registration !== "dynamic") return Promise.resolve(undefined);
    let flight = this.inflight.get(stale.id);
    if (!flight) {
      flight = this.once(stale).finally(() => this.inflight.delete(stale.id));
      this.inflight.set(stale.id, flight);
    }
    return flight;
  }

  private async once(stale: ProviderClient): Promise<ProviderClient | undefined> {
    const { id } = stale;
    const log = this.deps.logger.child({ provider: id });
    const newer = async () => {
      await this.deps.reload();
      const current = this.deps.registry.get(id);
      return current !== stale ? current : undefined;
    };
    const version = this.deps.versionOf(stale);
    if (version === undefined) return newer();
    // One replica claims the registration (the row's version moves on); the others wait for its result.
    if (!(await this.deps.repo.claim(id, version))) {
      await this.waitForVersion(id, version + 2);
      return newer();
    }
    const row = await this.deps.repo.find(id);
    if (!row) return undefined;
    const { options, registration } = this.deps.outbound(id, row.allowInsecureHttp);
    const publicUrl = this.deps.publicUrl;
    let fields: RegistrationFields;
    try {
      fields = await registerAgain(row, {
        vault: this.deps.vault,
        options,
        registration,
        precheck: (url) => this.deps.precheck(id, url),
        backchannelLogoutUri: publicUrl ? `${publicUrl}/oidc/backchannel-logout/${encodeURIComponent(id)}` : undefined,
      });
    } catch (err) {
      const e = classifyProviderError(err);
      log.warn({ audit: true, event: "client_reregistration_failed", code: e.code, status: e.options.status }, "could not register the client again");
      return undefined;
    }
    if (!(await this.deps.repo.updateRegistration(id, row.version, fields))) return newer();
    log.warn(
      { audit: true, event: "client_reregistered", reason: "invalid_client", issuer: fields.issuer, issuerChanged: fields.issuer !== row.issuer, clientId: fields.clientId },
      "the provider answered invalid_client: client registered again",
    );
    await this.deps.announce();
    return newer();
  }

  /** Waits (bounded by waitMs) until the provider's row reaches `target`: another replica's registration stored. */
  private async waitForVersion(id: string, target: number): Promise<void> {
    const until = Date.now() + this.deps.waitMs;
    for (;;) {
      const row = await this.deps.repo.find(id);
      if (!row || row.version >= target || Date.now() >= until) return;
      await sleep(50);
    }
  }
}
