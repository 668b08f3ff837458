import { createHook } from "node:async_hooks";
import { describe, expect, it } from "vitest";
import { createLogger } from "../../src/logger.js";
import { CallerDirectory } from "../../src/rpc/auth.js";
import { RpcChain, RpcFailure, type IncomingCall } from "../../src/rpc/chain.js";
import { Code, LibraryStatusError, type RpcStatus } from "../../src/rpc/errors.js";
import { libraryAnswer } from "../../src/rpc/grpc-library.js";
import { SessionNotFoundError } from "../../src/sessions/errors.js";
import type { CallContext } from "../../src/sessions/scope.js";
import { LogSink } from "../helpers/service.js";

/** A call as a listener would describe it, with a cancel switch the test controls. */
function incoming(o: { method?: string; deadline?: number; cancelledAlready?: boolean } = {}) {
  const listeners: Array<() => void> = [];
  let cancelled = o.cancelledAlready ?? false;
  const call: IncomingCall = {
    service: "tokenservice.v1.TokenService",
    method: o.method ?? "GetToken",
    protocol: "connect",
    peer: "127.0.0.1:5000",
    authorization: () => undefined,
    peerNames: () => [],
    header: () => undefined,
    deadline: o.deadline,
    isCancelled: () => cancelled,
    onCancel: (l) => (cancelled ? l() : listeners.push(l)),
  };
  return {
    call,
    cancel() {
      cancelled = true;
      for (const l of listeners) l();
    },
  };
}

function setup() {
  const logs = new LogSink();
  const observed: Array<{ method: string; code: string }> = [];
  const chain = new RpcChain(new CallerDirectory([]), createLogger("debug", logs), (e) => observed.push(e));
  return { logs, observed, chain };
}

async function statusOf(p: Promise<unknown>): Promise<RpcStatus> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err).toBeInstanceOf(RpcFailure);
  return (err as RpcFailure).status;
}

describe("RpcChain: one log line and one metric per call", () => {
  it("logs success and failure with the code, reason and protocol, and counts each once", async () => {
    const { chain, logs, observed } = setup();
    await chain.run(incoming().call, async () => "ok");
    await statusOf(chain.run(incoming().call, async () => Promise.reject(new SessionNotFoundError())));
    const lines = logs.lines().filter((l) => l.msg === "rpc");
    expect(lines).toEqual([
      expect.objectContaining({ level: "info", code: "ok", protocol: "connect", caller: "anonymous", rpc: "tokenservice.v1.TokenService/GetToken" }),
      expect.objectContaining({ level: "info", code: "not_found", reason: "SESSION_NOT_FOUND" }),
    ]);
    expect(observed.map((o) => o.code)).toEqual(["ok", "not_found"]);
    expect(chain.inflightCount).toBe(0);
  });

  it("answers an unexpected error with INTERNAL and logs its stack frames, never its message, even over several lines", async () => {
    const { chain, logs } = setup();
    const status = await statusOf(
      chain.run(incoming().call, async () => {
        throw new Error("boom: first line\nDETAIL: refresh_token=SECRET-rt-123\nmore");
      }),
    );
    expect(status).toEqual({ code: Code.Internal, message: "internal error", known: false });
    const line = logs.lines().find((l) => l.msg === "rpc failed with an unexpected error")!;
    expect(line).toMatchObject({ level: "error", code: "internal", err: { name: "Error" } });
    expect(String(line.stack)).toMatch(/^\s+at /);
    expect(logs.text()).not.toContain("SECRET-rt-123");
    expect(logs.text()).not.toContain("boom");
  });
});

describe("RpcChain: cancellation and deadlines", () => {
  it("gives the handler the caller's deadline, and a signal that aborts when the caller goes away", async () => {
    const { chain, logs } = setup();
    const deadline = Date.now() + 5000;
    const { call, cancel } = incoming({ deadline });
    let seen: CallContext | undefined;
    const running = chain.run(call, (ctx) => {
      seen = ctx;
      return new Promise((_, reject) => ctx.signal!.addEventListener("abort", () => reject(new Error("aborted"))));
    });
    expect(seen!.deadline).toBe(deadline);
    expect(seen!.signal!.aborted).toBe(false);
    cancel();
    // The caller already has its answer from the transport; the log says it went away.
    expect(await statusOf(running)).toMatchObject({ code: Code.Canceled });
    expect(logs.lines().find((l) => l.msg === "rpc")).toMatchObject({ code: "canceled" });
  });

  it("hands an already aborted signal to a handler whose caller left before it asked", async () => {
    const { chain } = setup();
    const { call } = incoming({ cancelledAlready: true, deadline: Date.now() - 1 });
    let aborted: boolean | undefined;
    const status = await statusOf(
      chain.run(call, async (ctx) => {
        aborted = ctx.signal!.aborted;
        return "late";
      }),
    );
    expect(aborted).toBe(true);
    // Its deadline had passed: logged as DEADLINE_EXCEEDED, not as a success.
    expect(status.code).toBe(Code.DeadlineExceeded);
  });
});

describe("RpcChain: cut-off at the end of a drain", () => {
  it("answers calls in flight UNAVAILABLE (SHUTTING_DOWN), aborts their work, and refuses calls that come later", async () => {
    const { chain, logs } = setup();
    let signal: AbortSignal | undefined;
    const stuck = chain.run(incoming().call, (ctx) => {
      signal = ctx.signal;
      return new Promise(() => undefined);
    });
    expect(chain.inflightCount).toBe(1);
    chain.cutOff();
    expect(await statusOf(stuck)).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    expect(signal!.aborted).toBe(true);
    expect(chain.inflightCount).toBe(0);
    let ran = false;
    const later = await statusOf(
      chain.run(incoming().call, async () => {
        ran = true;
        return "no";
      }),
    );
    expect(later).toMatchObject({ code: Code.Unavailable, reason: "SHUTTING_DOWN" });
    expect(ran).toBe(false);
    expect(logs.lines().filter((l) => l.msg === "rpc").map((l) => l.reason)).toEqual(["SHUTTING_DOWN", "SHUTTING_DOWN"]);
  });
});

describe("RpcChain.serve: a call answered at once settles without a promise", () => {
  it("settles, logs and answers a plain value before serve returns, and makes no promise on the way", () => {
    const { chain, logs, observed } = setup();
    const answers: Array<[RpcFailure | undefined, unknown]> = [];
    let promises = 0;
    const hook = createHook({ init: (_id, type) => void (type === "PROMISE" && promises++) }).enable();
    try {
      chain.serve(incoming().call, () => "at once", (failure, value) => answers.push([failure, value]));
    } finally {
      hook.disable();
    }
    expect(answers).toEqual([[undefined, "at once"]]);
    expect(promises).toBe(0);
    expect(logs.lines().filter((l) => l.msg === "rpc")).toEqual([expect.objectContaining({ code: "ok" })]);
    expect(observed.map((o) => o.code)).toEqual(["ok"]);
    expect(chain.inflightCount).toBe(0);
  });

  it("maps a handler's synchronous throw as it maps a rejection, at once", () => {
    const { chain, logs } = setup();
    const answers: Array<RpcFailure | undefined> = [];
    chain.serve(
      incoming().call,
      () => {
        throw new SessionNotFoundError();
      },
      (failure) => answers.push(failure),
    );
    expect(answers).toHaveLength(1);
    expect(answers[0]!.status).toMatchObject({ code: Code.NotFound, reason: "SESSION_NOT_FOUND" });
    expect(logs.lines().find((l) => l.msg === "rpc")).toMatchObject({ code: "not_found", reason: "SESSION_NOT_FOUND" });
  });

  it("follows a handler's promise to its end, and answers once", async () => {
    const { chain } = setup();
    const answers: Array<[RpcFailure | undefined, unknown]> = [];
    let finish!: (v: string) => void;
    let promises = 0;
    const hook = createHook({ init: (_id, type) => void (type === "PROMISE" && promises++) }).enable();
    try {
      chain.serve(incoming().call, () => new Promise<string>((r) => (finish = r)), (failure, value) => answers.push([failure, value]));
    } finally {
      hook.disable();
    }
    // The hook counts: this handler's own promise and the chain's `then` on it.
    expect(promises).toBeGreaterThanOrEqual(2);
    expect(answers).toEqual([]);
    expect(chain.inflightCount).toBe(1);
    finish("later");
    await new Promise((r) => setImmediate(r));
    expect(answers).toEqual([[undefined, "later"]]);
    expect(chain.inflightCount).toBe(0);
    // A cut-off after the answer does not answer the call again.
    chain.cutOff();
    expect(answers).toHaveLength(1);
  });

  it("answers a handler whose thenable throws from `then`, and does not leave it in flight", () => {
    const { chain } = setup();
    const answers: Array<RpcFailure | undefined> = [];
    const broken = {
      then() {
        throw new Error("a broken thenable");
      },
    };
    chain.serve(incoming().call, () => broken as unknown as PromiseLike<string>, (failure) => answers.push(failure));
    expect(answers).toHaveLength(1);
    expect(answers[0]!.status).toMatchObject({ code: Code.Internal });
    expect(chain.inflightCount).toBe(0);
  });

  it("lets a listener's own failure in `done` reach the listener, and does not answer the call a second time", () => {
    const { chain, logs } = setup();
    let calls = 0;
    expect(() =>
      chain.serve(incoming().call, () => "value", () => {
        calls++;
        throw new Error("the listener broke");
      }),
    ).toThrow("the listener broke");
    expect(calls).toBe(1);
    expect(logs.lines().filter((l) => l.msg === "rpc")).toEqual([expect.objectContaining({ code: "ok" })]);
  });
});

describe("libraryAnswer: a grpc-node library's unary handler, for the chain", () => {
  type Callback = (err: { code?: number; details?: string } | null, value?: unknown) => void;
  const call = {} as never;
  const answerOf = (handler: (call: unknown, callback: Callback) => void) => libraryAnswer(handler as never, call);

  it("is the answer itself when the library calls back before returning, and ignores a second call back", () => {
    expect(
      answerOf((_c, cb) => {
        cb(null, "now");
        cb(null, "again");
      }),
    ).toBe("now");
  });

  it("keeps an answer given before the library threw, as a promise would", () => {
    expect(
      answerOf((_c, cb) => {
        cb(null, "given");
        throw new Error("after the answer");
      }),
    ).toBe("given");
  });

  it("throws the library's status at once, mapped, when it calls back with an error", () => {
    const thrown = (() => {
      try {
        answerOf((_c, cb) => cb({ code: Code.NotFound, details: "unknown service" }));
      } catch (err) {
        return err;
      }
    })();
    expect(thrown).toBeInstanceOf(LibraryStatusError);
    expect(thrown).toMatchObject({ status: Code.NotFound, message: "unknown service" });
  });

  it("throws what the library throws before answering", () => {
    expect(() => answerOf(() => {
      throw new Error("broken library");
    })).toThrow("broken library");
  });

  it("is a promise of a later answer, settled by the first call back", async () => {
    let later!: Callback;
    const answer = answerOf((_c, cb) => (later = cb));
    expect(answer).toBeInstanceOf(Promise);
    later(null, "later");
    later(null, "ignored");
    expect(await answer).toBe("later");
    let failing!: Callback;
    const failed = answerOf((_c, cb) => (failing = cb)) as Promise<unknown>;
    failing({ code: Code.Unavailable, details: "not now" });
    await expect(failed).rejects.toMatchObject({ status: Code.Unavailable, message: "not now" });
  });
});
