import type { ProviderConfig, RefreshConfig } from "../config.js";
import type { ProviderRow } from "../db/provider-entity.js";
import { DuplicateKeyError, type ProviderRepository } from "../db/provider-repository.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, type Logger } from "../logger.js";
import { discoverIssuer, discoverResource, registerClient, type DiscoveryOptions } from "../providers/discovery.js";
import { classifyProviderError, ProviderError } from "../providers/errors.js";
import { observedFetch, type ProviderTelemetry } from "../providers/observed-fetch.js";
import { logRefusal } from "../providers/guarded-fetch.js";
import { findRefusal, type OutboundPolicy } from "../providers/outbound-policy.js";
import type { FetchLike, ProviderClient, ProviderRegistry } from "../providers/provider-client.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import type { CallContext } from "../sessions/scope.js";
import { asDomainError } from "../sessions/store-errors.js";
import type { UserSessions } from "../sessions/user-sessions.js";
import {
  ProviderExistsError,
  ProviderHasSessionsError,
  ProviderInUseError,
  ProviderNotFoundError,
  ProviderReadOnlyError,
  ProviderSetupError,
} from "./errors.js";
import type { ClientMetadataDocument } from "./client-metadata.js";
import type { ClientSigningKeys } from "./client-keys.js";
import { applicationType, checkPkce, chooseRegistration, cimdRedirectUris, requestedMode, type RegistrationMode } from "./registration-choice.js";
import { configOfRow, viewOfClient, type ProviderView } from "./provider-view.js";
import { Reregistration } from "./reregistration.js";
import type { SecretVault } from "./secret-vault.js";
import { checkProviderId, checkScopes, checkUrl } from "./validation.js";
import { checkManagedInput, managedResource, requireIdJagProfile, type ManagedInput } from "./enterprise-managed.js";

export type { ProviderView } from "./provider-view.js";

export type ClientAuthMethod = "client_secret_basic" | "client_secret_post" | "none";

export interface RegisterProviderInput {
  id: string;
  issuer: string;
  resourceUrl: string;
  clientId: string;
  clientSecret: string;
  clientAuthMethod: string;
  dynamicRegistration: boolean;
  redirectUris: string[];
  scopes: string[];
  /** Down-scoping on refresh; empty: a refresh sends no scope. */
  refreshScopes: string[];
  allowInsecureHttp: boolean;
  /** The service's HTTP listener as the provider reaches it, for the back-channel logout URI. */
  publicUrl: string;
  /** How audience tokens are obtained; "" means refresh. */
  audienceTokens: "" | "refresh" | "exchange";
  /** For exchange: resource (default), audience or both. */
  exchangeTarget: string;
  /** How the client is obtained; "" (not given): AUTO with a resource_url, else STATIC (see requestedMode). */
  registration: RegistrationMode;
  /** Register even when the metadata does not list S256 (the operator's word that PKCE works). */
  assumePkce: boolean;
  /** "" means oauth. enterprise_managed: see checkManagedInput. */
  kind?: "" | "oauth" | "enterprise_managed";
  enterpriseIdp?: string;
  resource?: string;
}

export interface ProviderAdminDeps {
  repo: ProviderRepository;
  sessions: SessionRepository;
  registry: ProviderRegistry;
  vault: SecretVault;
  users: UserSessions;
  /** Tells every replica that providers changed. */
  announce: () => Promise<void>;
  refresh: RefreshConfig;
  /** The guarded fetch of a runtime provider's requests (discovery and registration included). */
  fetchFor: (id: string, insecure: boolean) => FetchLike;
  /** Whether the operator allows plain http at all (outbound.allow_insecure_http). */
  outbound: OutboundPolicy;
  /** Spans and latency of discovery and registration requests. */
  telemetry: ProviderTelemetry;
  logger: Logger;
  /** Makes the client of a provider (the same adapter YAML providers use). */
  makeClient: (config: ProviderConfig) => ProviderClient;
  /** When the YAML providers came to be: the process start. */
  startedAt: Date;
  /** The service's client ID metadata document, when it serves one (CIMD). */
  clientDocument?: ClientMetadataDocument;
  /** The client signing keys (private_key_jwt of CIMD providers). */
  signingKeys?: ClientSigningKeys;
  /** The service-level public_url: the default of RegisterProvider's. */
  publicUrl?: string;
}

const METHODS = new Set<ClientAuthMethod>(["client_secret_basic", "client_secret_post", "none"]);


/**
 * Providers registered at run time: discovery (an issuer, or a protected
 * resource's RFC 9728 metadata), a static or dynamically registered client
 * (RFC 7591), storage with sealed secrets, and every replica's registry kept
 * in step through the database.
 */
export class ProviderAdmin {
  /** Row versions behind the runtime clients, to keep unchanged clients (and their caches) across reloads. */
  private loaded = new Map<string, { version: number; client: ProviderClient }>();
  private reloading: Promise<void> | undefined;
  private reloadAgain = false;
  private readonly reregistration: Reregistration;

  constructor(private readonly deps: ProviderAdminDeps) {
    this.reregistration = new Reregistration({
      repo: deps.repo,
      vault: deps.vault,
      logger: deps.logger,
      registry: deps.registry,
      versionOf: (client) => (this.loaded.get(client.id)?.client === client ? this.loaded.get(client.id)!.version : undefined),
      reload: () => this.reload(),
      announce: deps.announce,
      outbound: (id, insecure) => {
        const { options, observed } = this.outboundOf(id, insecure, {});
        return { options, registration: { ...options, fetch: (url, init) => observed(url, init, "registration") } };
      },
      precheck: (id, url) => this.precheck(id, url),
      publicUrl: deps.publicUrl,
      // Discovery (two requests, a resource's too) and the registration.
      waitMs: 4 * deps.refresh.providerTimeoutMs,
    });
  }

  /** Reads the runtime providers from the database into the registry. Concurrent calls coalesce. */
  reload(): Promise<void> {
    if (this.reloading) {
      this.reloadAgain = true;
      return this.reloading;
    }
    this.reloading = (async () => {
      do {
        this.reloadAgain = false;
        const rows = await this.deps.repo.list();
        const next = new Map<string, { version: number; client: ProviderClient }>();
        for (const row of rows) {
          const kept = this.loaded.get(row.id);
          if (kept && kept.version === row.version) {
            next.set(row.id, kept);
            continue;
          }
          try {
            next.set(row.id, { version: row.version, client: this.deps.makeClient(configOfRow(row, this.deps)) });
          } catch (err) {
            this.deps.logger.error({ provider: row.id, err: errSummary(err) }, "runtime provider cannot be loaded (its secret does not open); skipped");
          }
        }
        this.loaded = next;
        this.deps.registry.setRuntime([...next.values()].map((e) => e.client));
      } while (this.reloadAgain);
    })().finally(() => (this.reloading = undefined));
    return this.reloading;
  }

  register(input: RegisterProviderInput, ctx: CallContext = {}): Promise<ProviderView> {
    return this.registerProvider(input, ctx).catch(asDomainError);
  }

  list(): Promise<ProviderView[]> {
    return this.listProviders().catch(asDomainError);
  }

  delete(id: string, revokeSessions: boolean, ctx: CallContext = {}): Promise<number> {
    return this.deleteProvider(id, revokeSessions, ctx).catch(asDomainError);
  }

  /**
   * After `invalid_client` from a dynamically registered provider: its client
   * registered again, once (see Reregistration); undefined when it cannot be.
   */
  reregister(stale: ProviderClient): Promise<ProviderClient | undefined> {
    return this.reregistration.run(stale);
  }

  /** How discovery and registration requests of a provider go out: guarded, observed, with the provider timeout. */
  private outboundOf(id: string, insecure: boolean, ctx: CallContext) {
    const guarded = this.deps.fetchFor(id, insecure);
    const observed = (url: string, init: RequestInit, during: string) =>
      observedFetch(guarded, this.deps.telemetry, id, url.includes("/.well-known/") ? "discovery" : during, ctx.trace)(url, init);
    const options: DiscoveryOptions = {
      fetch: (url, init) => observed(url, init, "discovery"),
      allowInsecureHttp: insecure,
      timeoutMs: this.deps.refresh.providerTimeoutMs,
    };
    return { options, observed };
  }

  /** The outbound policy's address rules for a URL the caller or a resource's metadata names; a URL that does not parse is left to checkUrl. */
  private async precheck(provider: string, value: string): Promise<void> {
    let url: URL;
    try {
      url = new URL(value);
    } catch {
      return;
    }
    try {
      await this.deps.outbound.precheck(url);
    } catch (err) {
      const refusal = findRefusal(err);
      if (refusal) logRefusal(this.deps.logger, provider, url, refusal);
      throw err;
    }
  }

  private async registerProvider(input: RegisterProviderInput, ctx: CallContext): Promise<ProviderView> {
    const id = checkProviderId(input.id);
    if ((input.issuer === "") === (input.resourceUrl === "")) {
      throw new InvalidArgumentError(input.issuer === "" ? "issuer" : "resource_url", "set exactly one of issuer and resource_url");
    }
    // A destination the policy refuses is answered as one before any other check of the URL, whatever the request says.
    await this.precheck(id, input.issuer || input.resourceUrl);
    const insecure = input.allowInsecureHttp;
    if (insecure && !this.deps.outbound.settings.allowInsecureHttp) {
      throw new InvalidArgumentError("allow_insecure_http", "is refused: the operator must allow plain http first (outbound.allow_insecure_http)");
    }
    let redirectUris = input.redirectUris.map((u, i) => checkUrl(u, `redirect_uris[${i}]`, insecure).href);
    const scopes = checkScopes(input.scopes);
    const refreshScopes = checkScopes(input.refreshScopes, "refresh_scopes");
    const mode = requestedMode(input);
    // A given client_id makes AUTO a pre-registered client; CIMD and dynamic registration get theirs from elsewhere.
    const given = mode === "static" || (mode === "auto" && input.clientId !== "");
    let method: ClientAuthMethod | "private_key_jwt";
    if (given) {
      if (input.clientId === "") throw new InvalidArgumentError("client_id", "is required for a pre-registered client (registration STATIC)");
      if (input.clientId.length > 255) throw new InvalidArgumentError("client_id", "must be at most 255 characters");
      method = (input.clientAuthMethod || (input.clientSecret === "" ? "none" : "client_secret_basic")) as ClientAuthMethod;
      if (!METHODS.has(method)) throw new InvalidArgumentError("client_auth_method", "must be client_secret_basic, client_secret_post or none");
      if (method !== "none" && input.clientSecret === "") throw new InvalidArgumentError("client_secret", "is required unless client_auth_method is none");
      if (method === "none" && input.clientSecret !== "") throw new InvalidArgumentError("client_secret", "must be empty for a public client (none)");
    } else {
      if (input.clientId !== "" || input.clientSecret !== "") {
        throw new InvalidArgumentError("client_id", `must be empty with registration ${mode.toUpperCase()} (the client comes from the registration)`);
      }
      if (mode === "dynamic" && redirectUris.length === 0) throw new InvalidArgumentError("redirect_uris", "are required for dynamic_registration");
      method = input.clientAuthMethod === "none" ? "none" : "client_secret_basic";
    }
    const publicUrlText = input.publicUrl || this.deps.publicUrl || "";
    const publicUrl = publicUrlText === "" ? undefined : checkUrl(publicUrlText, "public_url", insecure);
    const audienceTokens = input.audienceTokens === "" ? "refresh" : input.audienceTokens;
    const exchangeTarget = (input.exchangeTarget || "resource") as ProviderRow["exchangeTarget"];
    if (!["resource", "audience", "both"].includes(exchangeTarget)) {
      throw new InvalidArgumentError("exchange_target", "must be resource, audience or both");
    }
    if (this.deps.registry.get(id)) throw new ProviderExistsError(id);
    const managed: ManagedInput | undefined =
      input.kind === "enterprise_managed" ? { id, enterpriseIdp: input.enterpriseIdp ?? "", resource: input.resource ?? "", resourceUrl: input.resourceUrl, dynamicRegistration: input.dynamicRegistration } : undefined;
    if (managed) await checkManagedInput(managed, this.deps.registry, Date.now() + this.deps.refresh.providerTimeoutMs);
    else if (input.enterpriseIdp || input.resource) throw new InvalidArgumentError(input.enterpriseIdp ? "enterprise_idp" : "resource", "only for kind enterprise_managed");

    // Discovery, then (RFC 7591) registration, which looks the metadata up again first.
    const { options, observed } = this.outboundOf(id, insecure, ctx);
    const log = this.deps.logger.child({ provider: id });
    let resourceUrl: string | undefined;
    let defaultResource: string | undefined;
    let learned: Pick<ProviderRow, "challengeScopes" | "scopesSupported" | "resourceMetadataUrl"> = {};
    let issuer: URL;
    try {
      if (input.resourceUrl !== "") {
        const resource = await discoverResource(checkUrl(input.resourceUrl, "resource_url", insecure), options);
        resourceUrl = input.resourceUrl;
        defaultResource = resource.resource;
        learned = { challengeScopes: JSON.stringify(resource.challengeScopes), scopesSupported: JSON.stringify(resource.scopesSupported), resourceMetadataUrl: resource.metadataUrl };
        await this.precheck(id, resource.authorizationServers[0]!);
        issuer = checkUrl(resource.authorizationServers[0]!, "resource_url (its authorization server)", insecure);
        log.info({ resource: defaultResource, authorizationServer: issuer.href }, "protected resource metadata found");
      } else {
        issuer = checkUrl(input.issuer, "issuer", insecure);
      }
    } catch (err) {
      if (err instanceof InvalidArgumentError) throw err;
      throw this.setupError(err, "resource_discovery_failed", id);
    }
    const server = await discoverIssuer(issuer, options).catch((err: unknown) => {
      throw this.setupError(err, "discovery_failed", id);
    });
    const metadata = server.metadata;
    if (managed) {
      requireIdJagProfile(id, metadata);
      defaultResource = managedResource(managed, defaultResource);
    }
    if ((!managed && !metadata.authorization_endpoint) || !metadata.token_endpoint) {
      throw new ProviderSetupError("no_authorization_or_token_endpoint");
    }

    const registration = chooseRegistration(mode, given, metadata, this.deps.clientDocument);
    if (registration === "dynamic" && redirectUris.length === 0) {
      throw new InvalidArgumentError("redirect_uris", "are required for dynamic registration (the server offers no client ID metadata documents this service can use)");
    }
    const pkceAssumed = checkPkce(metadata, input.assumePkce);
    if (pkceAssumed) {
      log.warn(
        { audit: true, event: "pkce_assumed", caller: ctx.caller, issuer: metadata.issuer },
        "registered although the server's metadata does not list S256 (assume_pkce: the operator's decision)",
      );
    }
    let clientId = input.clientId;
    let clientSecret: string | undefined = input.clientSecret === "" ? undefined : input.clientSecret;
    let registrationToken: string | undefined;
    if (registration === "cimd") {
      const document = this.deps.clientDocument!;
      redirectUris = cimdRedirectUris(redirectUris, document);
      clientId = document.clientId;
      method = document.authMethod;
      log.info({ clientId, authMethod: method }, "client: the service's client ID metadata document");
    }
    if (registration === "dynamic") {
      const registered = await registerClient(
        new URL(metadata.issuer),
        server.algorithm,
        {
          redirectUris,
          authMethod: method === "none" ? "none" : "client_secret_basic",
          scopes,
          backchannelLogoutUri: publicUrl ? new URL(`oidc/backchannel-logout/${encodeURIComponent(id)}`, publicUrl.href.endsWith("/") ? publicUrl : `${publicUrl.href}/`).href : undefined,
          applicationType: applicationType(redirectUris),
        },
        { ...options, fetch: (url, init) => observed(url, init, "registration") },
      ).catch((err: unknown) => {
        throw this.setupError(err, "registration_refused", id);
      });
      clientId = registered.clientId;
      clientSecret = registered.clientSecret;
      registrationToken = registered.registrationAccessToken;
      method = registered.authMethod;
      log.info({ clientId, authMethod: method }, "client registered dynamically");
    }

    const vault = this.deps.vault;
    const sealed = (column: string, value: string | undefined) => (value === undefined ? null : vault.seal("provider", id, column, value).blob);
    const row: ProviderRow = {
      id,
      issuer: metadata.issuer,
      resourceUrl: resourceUrl ?? null,
      defaultResource: defaultResource ?? null,
      clientId,
      clientAuthMethod: method,
      registration,
      keyId: vault.primaryKeyId,
      clientSecretCt: sealed("client_secret", clientSecret),
      registrationTokenCt: sealed("registration_access_token", registrationToken),
      metadata: JSON.stringify({ ...metadata, openid: server.openid }),
      redirectUris: JSON.stringify(redirectUris),
      scopes: JSON.stringify(scopes),
      refreshScopes: JSON.stringify(refreshScopes),
      allowInsecureHttp: insecure,
      audienceTokens,
      exchangeTarget,
      ...learned,
      kind: managed ? "enterprise_managed" : "oauth",
      enterpriseIdp: managed?.enterpriseIdp ?? null,
      createdAt: new Date(),
      version: 1,
    };
    try {
      await this.deps.repo.insert(row);
    } catch (err) {
      if (err instanceof DuplicateKeyError) throw new ProviderExistsError(id);
      throw err;
    }
    await this.reload();
    await this.deps.announce();
    log.info(
      { audit: true, event: "provider_registered", caller: ctx.caller, issuer: row.issuer, resource: defaultResource, registration: row.registration, pkceAssumed },
      "provider registered",
    );
    return viewOfClient(this.deps.registry.get(id)!, metadata, this.deps.startedAt);
  }

  private async listProviders(): Promise<ProviderView[]> {
    const ids = this.deps.registry.ids();
    return Promise.all(
      ids.map(async (id) => {
        const client = this.deps.registry.get(id)!;
        // YAML providers show the endpoints of their discovery; one that cannot be reached shows none.
        const metadata = await client.metadata({ deadline: Date.now() + this.deps.refresh.providerTimeoutMs }).catch(() => undefined);
        return viewOfClient(client, metadata, this.deps.startedAt);
      }),
    );
  }

  private async deleteProvider(id: string, revokeSessions: boolean, ctx: CallContext): Promise<number> {
    checkProviderId(id);
    if (this.deps.registry.isConfigured(id)) throw new ProviderReadOnlyError(id);
    const row = await this.deps.repo.find(id);
    if (!row) throw new ProviderNotFoundError(id);
    const dependents = this.deps.registry
      .ids()
      .filter((other) => other !== id && this.deps.registry.get(other)?.config.enterpriseIdp === id);
    if (dependents.length > 0) throw new ProviderInUseError(id, dependents);
    let revoked = 0;
    if (revokeSessions) {
      revoked = await this.deps.users.revokeProviderSessions(id, ctx);
    } else {
      const count = await this.deps.sessions.countForProvider(id);
      if (count > 0) throw new ProviderHasSessionsError(id, count);
    }
    await this.deps.repo.delete(id);
    await this.reload();
    await this.deps.announce();
    this.deps.logger.info({ audit: true, event: "provider_deleted", caller: ctx.caller, provider: id, sessionsRevoked: revoked }, "provider deleted");
    return revoked;
  }

  /**
   * A discovery or registration failure, as the caller should see it: a
   * destination the outbound policy refused, or else one PROVIDER_SETUP_FAILED
   * per stage whose message does not tell a refused connection from a timeout
   * or an HTTP status (the log line has that detail).
   */
  private setupError(err: unknown, reason: string, provider: string): Error {
    if (err instanceof InvalidArgumentError || err instanceof ProviderSetupError) return err;
    const refusal = findRefusal(err);
    if (refusal) return refusal;
    // discoverIssuer wraps what went wrong: the log names the underlying failure (network, timeout, http_500, …).
    const e = classifyProviderError(err instanceof ProviderError && err.code === "discovery_failed" && err.cause !== undefined ? err.cause : err);
    this.deps.logger.warn({ provider, stage: reason, code: e.code, status: e.options.status }, "provider setup failed");
    return new ProviderSetupError(reason, { cause: err });
  }
}
