import type { MikroORM } from "@mikro-orm/core";

/** Connections of a pool: in use, idle, and callers waiting for one. */
export interface PoolStats {
  used: number;
  idle: number;
  waiting: number;
}

interface TarnPool {
  numUsed(): number;
  numFree(): number;
  numPendingAcquires(): number;
}

/** The ORM's (knex/tarn) pool, or zeros before it has one. */
export function ormPoolStats(orm: MikroORM): PoolStats {
  const connection = orm.em.getConnection() as unknown as { getKnex?: () => { client?: { pool?: TarnPool } } };
  const pool = connection.getKnex?.().client?.pool;
  if (!pool) return { used: 0, idle: 0, waiting: 0 };
  return { used: pool.numUsed(), idle: pool.numFree(), waiting: pool.numPendingAcquires() };
}
