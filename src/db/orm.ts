import type { MikroORM, Options } from "@mikro-orm/core";
import { Migrator } from "@mikro-orm/migrations";
import type { DatabaseConfig } from "../config.js";
import { migrationsFor } from "./migrations/index.js";
import { AudienceTokenSchema, AuthorizationStateSchema, LogoutTokenSchema, ProviderSchema } from "./provider-entity.js";
import { EndedSessionSchema, EventHorizonSchema, EventSchema } from "./event-entity.js";
import { SessionSchema } from "./session-entity.js";
import { SigningKeySchema } from "./signing-key-repository.js";

/** Bounds that make a dead database fail fast instead of hanging callers. */
export interface DatabaseTimeouts {
  /** Opening a new connection. */
  connectMs: number;
  /** Waiting for a free pooled connection. */
  acquireMs: number;
  /** One statement, enforced by the server (PostgreSQL statement_timeout) and the client. */
  queryMs: number;
}

export const DEFAULT_DB_TIMEOUTS: DatabaseTimeouts = { connectMs: 3000, acquireMs: 5000, queryMs: 5000 };

/** A row count or a pool size worth showing; never a connection string. */
export function describeDatabase(db: DatabaseConfig): string {
  if (db.kind === "sqlite") return `sqlite ${db.path}`;
  const u = new URL(db.url);
  return `postgresql ${u.hostname}:${u.port || "5432"}${u.pathname}`;
}

function baseOptions(db: DatabaseConfig): Partial<Options> {
  return {
    entities: [SessionSchema, ProviderSchema, AuthorizationStateSchema, LogoutTokenSchema, AudienceTokenSchema, SigningKeySchema, EventSchema, EventHorizonSchema, EndedSessionSchema],
    extensions: [Migrator],
    migrations: {
      tableName: "mikro_orm_migrations",
      migrationsList: migrationsFor(db.kind),
      transactional: true,
      allOrNothing: true,
      snapshot: false,
      emit: "ts",
      silent: true,
    },
    discovery: { warnWhenNoEntities: true },
    allowGlobalContext: false,
    debug: false,
    ensureDatabase: false,
  };
}

/**
 * Opens the ORM for the configured database. Only this folder knows the ORM;
 * the driver module for the other dialect is never loaded.
 */
export async function openOrm(db: DatabaseConfig, timeouts: DatabaseTimeouts = DEFAULT_DB_TIMEOUTS): Promise<MikroORM> {
  if (db.kind === "sqlite") {
    const { MikroORM } = await import("@mikro-orm/libsql");
    return MikroORM.init({
      ...baseOptions(db),
      dbName: db.path,
      pool: {
        min: 1,
        max: 1,
        acquireTimeoutMillis: timeouts.acquireMs,
        // Every new connection: WAL so readers never block the writer, and a
        // busy timeout so two processes on one file wait instead of failing.
        afterCreate: (conn: { exec(sql: string): void }, done: (err: Error | null, conn: unknown) => void) => {
          try {
            conn.exec("pragma journal_mode = wal; pragma busy_timeout = 5000; pragma synchronous = normal;");
            done(null, conn);
          } catch (err) {
            done(err as Error, conn);
          }
        },
      },
    } as Options);
  }
  const { MikroORM } = await import("@mikro-orm/postgresql");
  return MikroORM.init({
    ...baseOptions(db),
    clientUrl: db.url,
    pool: {
      min: 0,
      max: 10,
      acquireTimeoutMillis: timeouts.acquireMs,
      createTimeoutMillis: timeouts.connectMs,
      idleTimeoutMillis: 30_000,
      reapIntervalMillis: 1000,
    },
    driverOptions: {
      connection: {
        connectionTimeoutMillis: timeouts.connectMs,
        statement_timeout: timeouts.queryMs,
        query_timeout: timeouts.queryMs + 1000,
        keepAlive: true,
        application_name: "token-service",
      },
    },
  } as Options);
}

/** Key of the PostgreSQL advisory lock that serialises migrations across replicas. */
const MIGRATION_LOCK_KEY = 0x746f6b65; // "toke"

/**
 * Applies pending migrations; returns the names applied. Replicas starting
 * together on PostgreSQL take turns through an advisory lock held on a
 * dedicated connection for the duration of the migration only; on SQLite a
 * concurrent starter retries once the other has created the tables.
 */
export async function migrateUp(orm: MikroORM, db: DatabaseConfig): Promise<string[]> {
  const up = async () => (await orm.getMigrator().up()).map((m) => m.name);
  if (db.kind === "sqlite") {
    for (let attempt = 1; ; attempt++) {
      try {
        return await up();
      } catch (err) {
        if (attempt >= 3) throw err;
        await new Promise((r) => setTimeout(r, 200 * attempt));
      }
    }
  }
  const { default: pg } = await import("pg");
  const lock = new pg.Client({ connectionString: db.url, connectionTimeoutMillis: DEFAULT_DB_TIMEOUTS.connectMs });
  await lock.connect();
  try {
    await lock.query("SET lock_timeout = '120s'");
    await lock.query("SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY]);
    return await up();
  } finally {
    await lock.query("SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY]).catch(() => undefined);
    await lock.end().catch(() => undefined);
  }
}
