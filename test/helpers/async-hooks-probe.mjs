// Loaded into a service process with --import by test/integration/async-hooks.test.ts: on SIGUSR2 it writes
// whether Node's promise hooks are on (a new promise then carries an async id). ASYNC_HOOKS_PROBE_ON=1 turns them
// on first with an AsyncLocalStorage of its own, so the test can show that the probe tells the two apart.
import { AsyncLocalStorage } from "node:async_hooks";

if (process.env.ASYNC_HOOKS_PROBE_ON === "1") new AsyncLocalStorage().run(true, () => undefined);
process.on("SIGUSR2", () => {
  const on = Object.getOwnPropertySymbols(Promise.resolve()).some((s) => s.description === "async_id_symbol");
  process.stderr.write(`async-hooks-probe: promise hooks ${on ? "on" : "off"}\n`);
});
