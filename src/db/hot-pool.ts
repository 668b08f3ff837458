import { DEFAULT_DB_TIMEOUTS } from "./orm.js";

/**
 * A small `pg` pool of a hot path's own, for named (server-side prepared)
 * statements, with the ORM's timeouts. `exitOnIdle`: idle connections do not
 * keep the process alive.
 */
export async function openHotPool(url: string, applicationName: string, max: number, exitOnIdle = false): Promise<import("pg").Pool> {
  const { default: pg } = await import("pg");
  const pool = new pg.Pool({
    connectionString: url,
    max,
    connectionTimeoutMillis: DEFAULT_DB_TIMEOUTS.connectMs,
    idleTimeoutMillis: 30_000,
    statement_timeout: DEFAULT_DB_TIMEOUTS.queryMs,
    query_timeout: DEFAULT_DB_TIMEOUTS.queryMs + 1000,
    keepAlive: true,
    allowExitOnIdle: exitOnIdle,
    application_name: applicationName,
  });
  // An idle client dying with the server must not crash the process; the pool replaces it.
  pool.on("error", () => undefined);
  return pool;
}
