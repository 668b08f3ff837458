import type { Writable } from "node:stream";
import { createApp } from "./app.js";
import { tracingFromEnv } from "./tracing/setup.js";
import { ConfigError, loadConfig } from "./config.js";
import { KeyRingError } from "./crypto/key-ring.js";
import { doctorCommand } from "./cli/doctor.js";
import { keysCommand } from "./cli/keys.js";
import { migrateCommand } from "./cli/migrate.js";
import { providersCommand } from "./cli/providers.js";
import { sessionsCommand } from "./cli/sessions.js";
import { webhooksCommand } from "./cli/webhooks.js";

/** What the CLI may touch of the process; main.ts supplies the real ones. */
export interface CliIo {
  stdout: Writable;
  stderr: Writable;
  /** Installs signal handlers that call `stop`; only the long-running `serve` uses it. */
  onSignals(stop: (signal: string) => Promise<void>): void;
  /** Installs the handler (SIGHUP) that calls `reload`; only `serve` uses it. */
  onReload?(reload: (signal: string) => Promise<void>): void;
}

const USAGE = `Usage: token-service [command]

Commands:
  serve                 run the service (default)
  migrate [up|status]   apply pending database migrations, or list them
  keys generate [--id KID]
                        print a new encryption key as kid:base64key
  keys rotate [--batch N]
                        re-encrypt every session under the primary key
                        (resumable; safe while replicas serve)
  keys status           sessions per key id, and whether each key is configured
  sessions list --user U [--provider P] [--show-ids]
                        a user's sessions (metadata only)
  providers list        every provider, from the YAML file and registered
  providers add --id ID (--issuer URL | --resource-url URL)
                [--client-id ID [--client-secret-env NAME] [--auth-method M] | --dynamic]
                [--redirect-uri URL]... [--scope S]... [--refresh-scope S]...
                [--public-url URL] [--allow-insecure-http]
                [--exchange [--exchange-target resource|audience|both]]
                [--kind enterprise_managed --enterprise-idp ID [--resource URL]]
                        register a provider (discovery, dynamic registration);
                        --exchange: audience tokens by RFC 8693 token exchange;
                        enterprise_managed: tokens by ID-JAG from ID's sessions
  providers remove --id ID [--revoke-sessions]
                        delete a registered provider
  webhooks deliveries [--webhook ID] [--dead | --pending | --delivered] [--limit N]
                        webhook deliveries, newest first (no payloads)
  webhooks retry --id MSG_ID
                        send a delivery (a dead letter) again now, same webhook-id
  doctor                check config, database, keys, providers, clocks, TLS
  help                  show this text

Environment: TOKEN_SERVICE_ADDR, TOKEN_SERVICE_HTTP_ADDR, TOKEN_SERVICE_ADMIN_ADDR, DATABASE_URL,
TOKEN_SERVICE_ENCRYPTION_KEYS, TOKEN_SERVICE_CONFIG, TOKEN_SERVICE_LOG_LEVEL
and the rest: docs/configuration.md.
`;

async function serve(env: NodeJS.ProcessEnv, io: CliIo): Promise<undefined> {
  const config = loadConfig(env);
  const tracing = await tracingFromEnv(env, { db: { "db.system.name": config.database.kind === "postgresql" ? "postgresql" : "sqlite" } });
  const starting = createApp(config, { loadConfig: () => loadConfig(env), tracing });
  starting.then(
    (app) => app.logger.info(tracing.summary ? { tracing: tracing.summary } : {}, tracing.summary ? "tracing on" : "tracing off (no OTEL_TRACES_EXPORTER or OTLP endpoint set)"),
    () => tracing.shutdown().catch(() => undefined),
  );
  // Handlers go in before start-up finishes: a SIGTERM during start-up waits for it, then drains.
  io.onSignals(async (signal) => {
    const app = await starting.catch(() => undefined);
    if (!app) return;
    app.logger.info({ signal }, "signal received");
    await app.close();
  });
  // A reload during start-up waits for it, then re-reads the configuration.
  io.onReload?.(async (signal) => {
    const app = await starting.catch(() => undefined);
    if (!app) return;
    app.logger.info({ signal }, "signal received: reloading the configuration");
    await app.reload(signal);
  });
  await starting;
  return undefined;
}

/** One line about an unexpected failure: error names, codes and messages down the cause chain. */
function describeFailure(err: unknown): string {
  const parts: string[] = [];
  for (let e: unknown = err, depth = 0; e && depth < 4; depth++) {
    const x = e as { name?: unknown; message?: unknown; code?: unknown; cause?: unknown };
    const message = typeof x.message === "string" ? x.message.split("\n")[0] : String(e);
    parts.push(`${typeof x.name === "string" ? x.name : "Error"}${typeof x.code === "string" ? ` [${x.code}]` : ""}: ${message}`);
    e = x.cause;
  }
  return parts.join(" <- ");
}

/**
 * Runs one CLI command. Resolves to an exit code, or undefined when the
 * command keeps running (serve).
 */
export async function runCli(argv: string[], env: NodeJS.ProcessEnv, io: CliIo): Promise<number | undefined> {
  const [command = "serve", ...rest] = argv;
  try {
    switch (command) {
      case "serve":
        return await serve(env, io);
      case "migrate":
        return await migrateCommand(rest, env, io.stdout);
      case "sessions":
        return await sessionsCommand(rest, env, io.stdout);
      case "doctor":
        return await doctorCommand(env, io.stdout);
      case "keys":
        return await keysCommand(rest, env, io.stdout);
      case "providers":
        return await providersCommand(rest, env, io.stdout);
      case "webhooks":
        return await webhooksCommand(rest, env, io.stdout);
      case "help":
      case "--help":
      case "-h":
        io.stdout.write(USAGE);
        return 0;
      default:
        io.stderr.write(`token-service: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (err) {
    if (err instanceof ConfigError || err instanceof KeyRingError) {
      io.stderr.write(`token-service: ${err.message}\n`);
      return 2;
    }
    io.stderr.write(`token-service: ${command} failed: ${describeFailure(err)}\n`);
    return 1;
  }
}
