import type { MikroORM } from "@mikro-orm/core";
import type { Config } from "../config.js";
import type { Logger } from "../logger.js";
import { closeInReverse, type Closeable } from "../util/close-in-reverse.js";
import { EventWake } from "../events/wake.js";
import { AudienceTokenRepository } from "./audience-repository.js";
import { EventRepository } from "./event-repository.js";
import { describeDatabase, migrateUp, openOrm } from "./orm.js";
import { PgChannel } from "./pg-channel.js";
import { ormPoolStats, type PoolStats } from "./pool-stats.js";
import { AuthorizationRepository } from "./provider-repository.js";
import { openSessionReader, type SessionReader } from "./session-reader.js";
import { SessionRepository } from "./session-repository.js";

/** The database, migrated: the ORM, its repositories, the hot read path and, on PostgreSQL, the change channel. */
export interface Store {
  readonly orm: MikroORM;
  readonly sessions: SessionRepository;
  readonly authorizations: AuthorizationRepository;
  readonly audiences: AudienceTokenRepository;
  /** The event outbox (docs/connection-health.md#events). */
  readonly events: EventRepository;
  /** Wakes outbox readers: commits here, NOTIFY from other replicas, and a slow poll. */
  readonly eventWake: EventWake;
  /** Prepared statements for session reads, on a connection pool of their own. */
  readonly reader: SessionReader;
  /** LISTEN/NOTIFY between replicas; none on SQLite. */
  readonly channel: PgChannel | undefined;
  /** The migrations this start-up applied. */
  readonly migrationsApplied: string[];
  /** Connections in use, idle and awaited, for the metrics. */
  pools(): Record<"write" | "read", PoolStats>;
  /** Closes the read pool, the channel and the ORM. */
  close(): Promise<void>;
}

/**
 * Opens the database, checks that it answers, applies the migrations and
 * opens the change channel and the read pool. On failure, what was opened
 * is closed.
 */
export async function createStore(config: Config, logger: Logger): Promise<Store> {
  const orm = await openOrm(config.database);
  const opened: Closeable[] = [{ close: () => orm.close(true) }];
  try {
    const check = await orm.checkConnection();
    if (!check.ok) {
      throw new Error(`cannot reach the database (${describeDatabase(config.database)}): ${check.reason.split("\n")[0]}`);
    }
    const migrationsApplied = await migrateUp(orm, config.database);
    const events = new EventRepository(orm, config.database.kind);
    const sessions = new SessionRepository(orm, config.database.kind, events);
    opened.push(sessions);
    let channel: PgChannel | undefined;
    if (config.database.kind === "postgresql") {
      channel = new PgChannel(config.database.url, logger, (channelName, message) => sessions.notify(channelName, message));
      opened.push(channel);
      await channel.start();
    }
    const eventWake = new EventWake(events, channel, config.events.pollMs);
    opened.push({ close: async () => eventWake.close() });
    const reader = await openSessionReader(config.database);
    opened.push(reader);
    return {
      orm,
      sessions,
      authorizations: new AuthorizationRepository(orm),
      audiences: new AudienceTokenRepository(orm),
      events,
      eventWake,
      reader,
      channel,
      migrationsApplied,
      pools: () => ({ write: ormPoolStats(orm), read: reader.poolStats() }),
      close: () => closeInReverse(opened),
    };
  } catch (err) {
    await closeInReverse(opened).catch(() => undefined);
    throw err;
  }
}
