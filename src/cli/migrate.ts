import type { Writable } from "node:stream";
import { ConfigError, loadConfig } from "../config.js";
import { describeDatabase, migrateUp, openOrm } from "../db/orm.js";

/** `migrate up | status`. */
export async function migrateCommand(args: string[], env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  const sub = args[0] ?? "up";
  if (sub !== "up" && sub !== "status") throw new ConfigError(`migrate: unknown subcommand "${sub}" (use up or status)`);
  const config = loadConfig(env);
  const orm = await openOrm(config.database);
  try {
    out.write(`database: ${describeDatabase(config.database)}\n`);
    if (sub === "up") {
      const applied = await migrateUp(orm, config.database);
      out.write(applied.length ? applied.map((m) => `applied  ${m}\n`).join("") : "up to date: nothing to apply\n");
    } else {
      const migrator = orm.getMigrator();
      const executed = await migrator.getExecutedMigrations();
      const pending = await migrator.getPendingMigrations();
      for (const m of executed) out.write(`applied  ${m.name}  ${new Date(m.executed_at).toISOString()}\n`);
      for (const m of pending) out.write(`pending  ${m.name}\n`);
      out.write(`${executed.length} applied, ${pending.length} pending\n`);
    }
    return 0;
  } finally {
    await orm.close(true);
  }
}
