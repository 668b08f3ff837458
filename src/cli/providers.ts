import { NO_TELEMETRY } from "../providers/observed-fetch.js";
import type { Writable } from "node:stream";
import { pino } from "pino";
import { ProviderAdmin, type ProviderView } from "../authorization/provider-admin.js";
import { clientMetadataDocument } from "../authorization/client-metadata.js";
import type { RegistrationMode } from "../authorization/registration-choice.js";
import { SecretVault } from "../authorization/secret-vault.js";
import { ConfigError, loadConfig } from "../config.js";
import { AudienceTokenRepository } from "../db/audience-repository.js";
import { CHANNEL } from "../db/pg-channel.js";
import { ProviderRepository } from "../db/provider-repository.js";
import { createLogger } from "../logger.js";
import { createProviders } from "../providers/create-providers.js";
import { DestinationNotAllowedError } from "../providers/outbound-policy.js";
import { RefreshCoordinator } from "../refresh/coordinator.js";
import { SessionWaiter } from "../refresh/waiter.js";
import { SessionError } from "../sessions/errors.js";
import { UserSessions } from "../sessions/user-sessions.js";
import { option } from "./args.js";
import { openStore } from "./store.js";

/** Every value of a repeatable `--name value` flag. */
function options(args: string[], name: string): string[] {
  const out: string[] = [];
  for (let i = args.indexOf(name); i !== -1; i = args.indexOf(name, i + 1)) {
    const v = args[i + 1];
    if (v === undefined || v.startsWith("--")) throw new ConfigError(`${name} needs a value`);
    out.push(v);
  }
  return out;
}

/** `--registration auto|static|cimd|dynamic`. */
function registrationOption(value: string | undefined): RegistrationMode {
  if (value === undefined) return "";
  if (!["auto", "static", "cimd", "dynamic"].includes(value)) throw new ConfigError(`--registration: must be auto, static, cimd or dynamic, not "${value}"`);
  return value as RegistrationMode;
}

function describe(p: ProviderView): string {
  return [
    p.id,
    p.source === "config" ? "yaml" : `runtime/${p.registration}`,
    p.issuer,
    `client ${p.clientId} (${p.clientAuthMethod})`,
    p.defaultResource ? `resource ${p.defaultResource}` : "",
    p.kind === "enterprise_managed" ? `enterprise_managed via ${p.enterpriseIdp ?? ""}` : "",
  ]
    .filter(Boolean)
    .join("\t");
}

/** `--kind`: oauth (the default) or enterprise_managed (ID-JAG). */
function kindOf(value: string | undefined): "" | "oauth" | "enterprise_managed" {
  if (value === undefined || value === "oauth") return value ?? "";
  if (value === "enterprise_managed") return value;
  throw new ConfigError(`--kind ${value}: use oauth or enterprise_managed`);
}

/**
 * `providers add | list | remove`: the same domain code as ProviderService.
 * A client secret comes from an environment variable named by
 * `--client-secret-env`, never from argv (argv shows in `ps`).
 */
export async function providersCommand(args: string[], env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  const sub = args[0];
  if (sub !== "add" && sub !== "list" && sub !== "remove") {
    throw new ConfigError(`providers: unknown subcommand "${sub ?? ""}" (use add, list or remove)`);
  }
  const config = loadConfig(env);
  const store = await openStore(config);
  const logger = createLogger("warn", pino.destination({ dest: 2, sync: true }));
  try {
    // The same outbound policy as the service: what the CLI registers is used there under it.
    const providers = createProviders(config, { logger, fetch: undefined, telemetry: NO_TELEMETRY });
    const { registry } = providers;
    const waiter = new SessionWaiter(undefined);
    const coordinator = new RefreshCoordinator(store.repo, store.vault, registry, waiter, config.refresh, logger);
    const users = new UserSessions(store.repo, store.vault, registry, coordinator, new AudienceTokenRepository(store.orm), logger, { providerTimeoutMs: config.refresh.providerTimeoutMs });
    const pg = config.database.kind === "postgresql";
    const admin = new ProviderAdmin({
      repo: new ProviderRepository(store.orm),
      sessions: store.repo,
      registry,
      vault: new SecretVault(store.keyRing),
      users,
      telemetry: NO_TELEMETRY,
      // Running replicas reload at once on PostgreSQL (NOTIFY); a SQLite service within its 10 s reload.
      announce: async () => (pg ? store.repo.notify(CHANNEL, "providers") : undefined),
      refresh: config.refresh,
      fetchFor: providers.runtimeFetch,
      outbound: providers.outbound,
      logger,
      makeClient: providers.client,
      startedAt: new Date(),
      // The service's document, as the service serves it from this configuration (CIMD providers get its client_id).
      clientDocument: clientMetadataDocument(config.publicUrl, config.clientMetadata),
      publicUrl: config.publicUrl,
    });
    await admin.reload();
    const ctx = { caller: "cli" };
    try {
      if (sub === "list") {
        for (const p of await admin.list()) out.write(`${describe(p)}\n`);
        return 0;
      }
      const id = option(args, "--id");
      if (!id) throw new ConfigError(`providers ${sub}: --id is required`);
      if (sub === "remove") {
        const revoked = await admin.delete(id, args.includes("--revoke-sessions"), ctx);
        if (revoked > 0 && pg) await store.repo.broadcastFlush(CHANNEL);
        out.write(`removed ${id}${revoked > 0 ? `; ${revoked} session(s) revoked` : ""}\n`);
        return 0;
      }
      const secretEnv = option(args, "--client-secret-env");
      const secret = secretEnv ? env[secretEnv] : undefined;
      if (secretEnv && !secret) throw new ConfigError(`--client-secret-env ${secretEnv}: that environment variable is empty or unset`);
      const view = await admin.register(
        {
          id,
          issuer: option(args, "--issuer") ?? "",
          resourceUrl: option(args, "--resource-url") ?? "",
          clientId: option(args, "--client-id") ?? "",
          clientSecret: secret ?? "",
          clientAuthMethod: option(args, "--auth-method") ?? "",
          dynamicRegistration: args.includes("--dynamic"),
          redirectUris: options(args, "--redirect-uri"),
          scopes: options(args, "--scope"),
          refreshScopes: options(args, "--refresh-scope"),
          allowInsecureHttp: args.includes("--allow-insecure-http"),
          publicUrl: option(args, "--public-url") ?? "",
          audienceTokens: args.includes("--exchange") ? "exchange" : "",
          exchangeTarget: option(args, "--exchange-target") ?? "",
          registration: registrationOption(option(args, "--registration")),
          assumePkce: args.includes("--assume-pkce"),
          kind: kindOf(option(args, "--kind")),
          enterpriseIdp: option(args, "--enterprise-idp") ?? "",
          resource: option(args, "--resource") ?? "",
        },
        ctx,
      );
      out.write(`added ${describe(view)}\n`);
      return 0;
    } catch (err) {
      // A refusal the domain explains (bad input, a duplicate id, discovery failed): a usage error, with its message.
      if (err instanceof SessionError || err instanceof DestinationNotAllowedError) throw new ConfigError(`providers ${sub}: ${err.message}`);
      throw err;
    } finally {
      await waiter.close();
      await providers.close();
    }
  } finally {
    await store.close();
  }
}
