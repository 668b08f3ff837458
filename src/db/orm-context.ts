import asyncHooks from "node:async_hooks";
import Module from "node:module";

/**
 * MikroORM without Node's async hooks.
 *
 * MikroORM keeps four AsyncLocalStorage instances (the transaction context,
 * the request context, "inside a flush", and raw query fragments). On Node 20
 * the first `run()` of any AsyncLocalStorage turns on async hooks for the
 * whole process, for good: from then on every promise, every `nextTick` and
 * every other async resource runs an init hook. The first transaction or
 * flush (the background refresh's first claim, seconds after start) did that,
 * and it cost every call: a bare grpc-js server with one AsyncLocalStorage
 * run answered Health/Check at 0.85× its own throughput (39 → 45 µs of CPU a
 * call), and the service gained 0.90 → 1.04× on Health/Check and 0.75 →
 * 0.83× on GetToken without it (docs/performance.md, "Async hooks").
 *
 * This service never lets MikroORM find an EntityManager from the context:
 * every query runs on a fork made with `useContext: false`
 * (session-repository.ts's `runOn`), and every transaction hands its
 * EntityManager to its callback, which uses it explicitly. A fork resolves
 * to itself without reading any context, and the global EntityManager
 * refuses context-specific work (`allowGlobalContext: false`), so a use of
 * the context would fail loudly rather than run outside its transaction.
 * MikroORM's modules therefore get a `CallScopedStorage` in place of
 * AsyncLocalStorage: the store holds for the synchronous part of `run()`
 * (as AsyncLocalStorage's does) and is not carried into async
 * continuations. No async hook is ever turned on.
 *
 * It must be installed before MikroORM is first loaded: main.ts imports this
 * module first, and so does the test set-up. `ormContextScoped()` says
 * whether it was (a test checks it in a running service, with a probe of
 * its promises).
 */

/** Marks a CallScopedStorage, whichever copy of this module made it (a test runner may load it more than once). */
const SCOPED = Symbol.for("token-service.call-scoped-storage");

/** AsyncLocalStorage's API as MikroORM uses it, scoped to the synchronous call. */
export class CallScopedStorage<T> {
  private current: T | undefined = undefined;
  readonly [SCOPED] = true;

  run<R, A extends unknown[]>(store: T, callback: (...args: A) => R, ...args: A): R {
    const previous = this.current;
    this.current = store;
    try {
      return callback(...args);
    } finally {
      this.current = previous;
    }
  }

  exit<R, A extends unknown[]>(callback: (...args: A) => R, ...args: A): R {
    return this.run(undefined as T, callback, ...args);
  }

  getStore(): T | undefined {
    return this.current;
  }

  /** Would need the async continuations this storage does not follow (MikroORM's RequestContext.enter). */
  enterWith(_store: T): never {
    throw new Error("enterWith is not supported: MikroORM's contexts are not used by this service (see src/db/orm-context.ts)");
  }

  disable(): void {
    this.current = undefined;
  }
}

const ASYNC_HOOKS = new Set(["node:async_hooks", "async_hooks"]);
const scopedAsyncHooks = Object.freeze({ ...asyncHooks, AsyncLocalStorage: CallScopedStorage });

type Load = (request: string, parent: { filename?: string | null } | null | undefined, isMain: boolean) => unknown;
const loader = Module as unknown as { _load: Load; tokenServiceScoped?: true };

/** Whether a module at `filename` is MikroORM's. */
function isMikroOrm(filename: string | null | undefined): boolean {
  return typeof filename === "string" && /[\\/]node_modules[\\/]@mikro-orm[\\/]/.test(filename);
}

if (!loader.tokenServiceScoped) {
  const load = loader._load;
  loader._load = function scopedLoad(request, parent, isMain) {
    if (ASYNC_HOOKS.has(request) && isMikroOrm(parent?.filename)) return scopedAsyncHooks;
    return load.call(this, request, parent, isMain);
  };
  loader.tokenServiceScoped = true;
}

/** Whether MikroORM, as loaded in this process, got CallScopedStorage (false: it was loaded first). */
export async function ormContextScoped(): Promise<boolean> {
  const { TransactionContext } = await import("@mikro-orm/core");
  const storage = (TransactionContext as unknown as { storage: Partial<Record<typeof SCOPED, boolean>> }).storage;
  return storage[SCOPED] === true;
}
