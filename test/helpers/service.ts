import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Writable } from "node:stream";
import pg from "pg";
import { stringify } from "yaml";
import { createApp, type App, type AppOverrides } from "../../src/app.js";
import { loadConfig, type Config } from "../../src/config.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { createLogger } from "../../src/logger.js";
import { connectGrpcClient, connectJsonClient, grpcJsClient, type ConnectTokenClient, type GrpcJsTokenClient } from "./clients.js";
import type { TestProvider } from "./oidc-provider.js";

/** Collects the JSON lines a logger writes: tests assert on real output. */
export class LogSink extends Writable {
  private readonly chunks: string[] = [];
  override _write(chunk: Buffer, _enc: BufferEncoding, cb: () => void): void {
    this.chunks.push(chunk.toString("utf8"));
    cb();
  }
  text(): string {
    return this.chunks.join("");
  }
  lines(): Array<Record<string, unknown>> {
    return this.text()
      .split("\n")
      .filter((l) => l.trim() !== "")
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  }
}

/** Creates an empty database on the test PostgreSQL server and returns its URL. */
export async function createTestDatabase(serverUrl: string): Promise<string> {
  const name = `ts_${Date.now().toString(36)}_${Math.random().toString(36).slice(2, 8)}`;
  const client = new pg.Client({ connectionString: serverUrl });
  await client.connect();
  try {
    await client.query(`create database ${name}`);
  } finally {
    await client.end();
  }
  const url = new URL(serverUrl);
  url.pathname = `/${name}`;
  return url.toString();
}

export type Dialect = "sqlite" | "postgresql";

export interface StartOptions {
  dialect: Dialect;
  /** PostgreSQL database URL (required for postgresql). */
  databaseUrl?: string;
  /** SQLite file; a temporary one by default. */
  sqlitePath?: string;
  provider?: TestProvider;
  /** Extra provider fields (snake_case, as in the YAML). */
  providerConfig?: Record<string, unknown>;
  /** Extra top-level YAML, e.g. { refresh: { lease_seconds: 3 } }. */
  yaml?: Record<string, unknown>;
  /** TOKEN_SERVICE_ENCRYPTION_KEYS; generated when omitted (and not sqliteKeyFile). */
  keys?: string;
  /** Use SQLite's generated key file instead of keys. */
  sqliteKeyFile?: boolean;
  overrides?: AppOverrides;
  /** Extra environment, e.g. { TOKEN_SERVICE_HTTP_ADDR: "off" }. */
  env?: Record<string, string>;
  /** Changes to the loaded configuration, for fields the YAML has no key for (e.g. lastUsedBatch). */
  configure?: (config: Config) => Config;
}

export interface TestService {
  app: App;
  /** The gRPC listener. */
  url: string;
  /** The HTTP listener (Connect, gRPC-Web); empty when it is off. */
  httpUrl: string;
  logs: LogSink;
  keys: string | undefined;
  /** Connect-ES, gRPC protocol, to the gRPC listener. */
  client: ConnectTokenClient;
  /** Connect-ES, Connect protocol with JSON, to the HTTP listener. */
  jsonClient: ConnectTokenClient;
  /** Stock @grpc/grpc-js. */
  grpcJs: GrpcJsTokenClient;
  dir: string;
  /** The environment the configuration was loaded from: `loadConfig(svc.env)` reads it again, as a reload does. */
  env: NodeJS.ProcessEnv;
  close(): Promise<void>;
}

/**
 * The background refresher is off unless a test configures it (`refresh.background`): a pass every 2 s would
 * otherwise race the test for a just-stored expired session, and on a busy machine sometimes take the fault a
 * test queued for its own GetToken. The tests of background refresh turn it on, with their own interval.
 */
function withBackgroundChoice(yaml: Record<string, unknown> = {}): Record<string, unknown> {
  const refresh = (yaml.refresh ?? {}) as Record<string, unknown>;
  if (refresh.background !== undefined) return yaml;
  return { ...yaml, refresh: { ...refresh, background: { enabled: false } } };
}

/** Starts the real service in this process on an ephemeral port. */
export async function startService(options: StartOptions): Promise<TestService> {
  const dir = mkdtempSync(join(tmpdir(), "token-service-test-"));
  const providers = options.provider
    ? [
        { ...options.provider.configEntry(), ...options.providerConfig },
      ]
    : [];
  const configFile = join(dir, "config.yaml");
  writeFileSync(configFile, stringify({ providers, ...withBackgroundChoice(options.yaml) }));
  const keys = options.sqliteKeyFile ? undefined : (options.keys ?? generateKeySpec("test-k1"));
  const databaseUrl =
    options.dialect === "postgresql"
      ? options.databaseUrl
      : `sqlite:${options.sqlitePath ?? join(dir, "sessions.db")}`;
  if (!databaseUrl) throw new Error("databaseUrl is required for postgresql");
  const env: NodeJS.ProcessEnv = {
    TOKEN_SERVICE_ADDR: "127.0.0.1:0",
    TOKEN_SERVICE_ADMIN_ADDR: "127.0.0.1:0",
    TOKEN_SERVICE_HTTP_ADDR: "127.0.0.1:0",
    DATABASE_URL: databaseUrl,
    TOKEN_SERVICE_CONFIG: configFile,
    TOKEN_SERVICE_LOG_LEVEL: "debug",
    ...(keys ? { TOKEN_SERVICE_ENCRYPTION_KEYS: keys } : {}),
    ...options.env,
  };
  const config = (options.configure ?? ((c: Config) => c))(loadConfig(env));
  const logs = new LogSink();
  const app = await createApp(config, { logger: createLogger(config.logLevel, logs), ...options.overrides });
  const grpcJs = grpcJsClient(app.url);
  return {
    app,
    url: app.url,
    httpUrl: app.httpUrl ?? "",
    logs,
    keys,
    client: connectGrpcClient(app.url),
    jsonClient: connectJsonClient(app.httpUrl ?? "http://127.0.0.1:1"),
    grpcJs,
    dir,
    env,
    async close() {
      grpcJs.close();
      await app.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
