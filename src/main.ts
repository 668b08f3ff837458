#!/usr/bin/env -S node --max-old-space-size=160 --max-semi-space-size=16 --no-allocation-site-pretenuring
// First: MikroORM must load with the storage that keeps Node's async hooks off (see the module).
import "./db/orm-context.js";
import { runCli } from "./cli.js";

/**
 * Process entry point, for `npm start` and the `token-service` command: the
 * only place that reads process.env and argv and installs signal handlers.
 */
const code = await runCli(process.argv.slice(2), process.env, {
  stdout: process.stdout,
  stderr: process.stderr,
  onSignals(stop) {
    let stopping = false;
    const handle = (signal: NodeJS.Signals) => {
      if (stopping) {
        process.stderr.write(`${signal} again: exiting now\n`);
        process.exit(1);
      }
      stopping = true;
      stop(signal).then(
        () => process.exit(0),
        () => process.exit(1),
      );
    };
    process.on("SIGTERM", handle);
    process.on("SIGINT", handle);
  },
  onReload(reload) {
    // Handled, SIGHUP no longer ends the process: it re-reads the configuration.
    process.on("SIGHUP", (signal) => void reload(signal));
  },
});
if (code !== undefined) {
  process.exitCode = code;
  // Whatever a failed command left open must not keep the process alive (output is flushed by then).
  if (code !== 0) setTimeout(() => process.exit(code), 2000).unref();
}
