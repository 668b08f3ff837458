import { startPostgres } from "../test/helpers/postgres.js";

/** The PostgreSQL server a benchmark runs on. */
export interface BenchPostgres {
  /** Superuser URL; each service gets its own database on it (createTestDatabase). */
  readonly url: string;
  /** Stops and deletes the throwaway cluster; leaves a DATABASE_URL server alone. */
  destroy(): Promise<void>;
}

/** DATABASE_URL when it names a PostgreSQL server, else a throwaway cluster (test/helpers/postgres.ts). */
export async function benchPostgres(): Promise<BenchPostgres> {
  const given = process.env.DATABASE_URL;
  if (given?.startsWith("postgres")) return { url: given, destroy: async () => undefined };
  const cluster = await startPostgres();
  return { url: cluster.url, destroy: () => cluster.destroy() };
}
