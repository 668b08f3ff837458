import type { TestProject } from "vitest/node";
import { startPostgres, type TestPostgres } from "./postgres.js";

declare module "vitest" {
  export interface ProvidedContext {
    /** Superuser URL of a PostgreSQL server for this test run. */
    postgresUrl: string;
  }
}

/**
 * Starts one throwaway PostgreSQL cluster for the whole run, unless
 * DATABASE_URL names one (a server where this role may CREATE DATABASE).
 * Each test file creates its own database on it.
 */
export default async function setup(project: TestProject): Promise<() => Promise<void>> {
  const given = process.env.DATABASE_URL;
  if (given?.startsWith("postgres")) {
    project.provide("postgresUrl", given);
    return async () => undefined;
  }
  let pg: TestPostgres | undefined = await startPostgres();
  console.log(`test PostgreSQL on port ${pg.port}, from ${pg.source} (set DATABASE_URL to use another server)`);
  project.provide("postgresUrl", pg.url);
  return async () => {
    await pg?.destroy();
    pg = undefined;
  };
}
