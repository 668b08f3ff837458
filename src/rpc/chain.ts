import type { RpcName } from "../config.js";
import { errSummary, type Logger } from "../logger.js";
import { PermissionDeniedError, ResourceNotAllowedError, UserNotBoundError } from "../sessions/errors.js";
import type { CallContext, UserBinding } from "../sessions/scope.js";
import type { CallerDirectory } from "./auth.js";
import { CallCancelledError, CallRefusedError, Code, codeName, ShuttingDownError, toRpcStatus, type RpcStatus } from "./errors.js";
import { TokenBucket } from "./rate-limit.js";
import { USER_ASSERTION_HEADER } from "./user-binding.js";
import { SlotSet } from "../util/slot-set.js";
import { SpanStatusCode, type Span } from "@opentelemetry/api";
import { NO_SPANS, type Spans, type TraceContext } from "../tracing/spans.js";

const TOKEN_SERVICE = "tokenservice.v1.TokenService";
/** Services whose RPCs a caller's `rpcs` list names. */
const SCOPED_SERVICES = new Set([TOKEN_SERVICE, "tokenservice.v1.ProviderService", "tokenservice.v1.EventService", "tokenservice.v1.WebhookService"]);
/** Services whose calls stay open (server streaming): re-admitted when the caller list changes. */
const STREAMING_SERVICES = new Set(["tokenservice.v1.EventService"]);
/** Probes must work without credentials. */
const OPEN_SERVICES = new Set(["grpc.health.v1.Health"]);

/** What a listener knows about one incoming call, in the same terms on both listeners. */
export interface IncomingCall {
  /** Fully qualified service name, "tokenservice.v1.TokenService". */
  service: string;
  /** Method name, "GetToken". */
  method: string;
  /** Wire protocol, for the log line: grpc, connect or grpc_web. */
  protocol: string;
  /** Remote address and port of the connection. */
  peer: string;
  /** The `authorization` header, if sent; read only when callers are configured. */
  authorization(): string | undefined;
  /** Names (subject CN, DNS SANs) of a client certificate the TLS layer verified; read only when needed. */
  peerNames(): readonly string[];
  /** A request header (gRPC metadata) by lower-case name; read only for tracing (traceparent, tracestate). */
  header(name: string): string | undefined;
  /** Epoch ms of the caller's deadline, if it set one. */
  deadline: number | undefined;
  /** True once the caller has gone away (cancel, reset, deadline). */
  isCancelled(): boolean;
  /** Registers what to do when the caller goes away; called only for calls that wait on something abortable. */
  onCancel(listener: () => void): void;
}

/** A call that did not succeed: its status, for the listener to put on the wire. */
export class RpcFailure {
  constructor(readonly status: RpcStatus) {}
}

/** How a call served by `RpcChain.serve` ends: with its failure, or with its result. */
export type CallDone<T> = (failure: RpcFailure | undefined, value: T | undefined) => void;

function isThenable<T>(value: T | PromiseLike<T>): value is PromiseLike<T> {
  return typeof (value as PromiseLike<T> | null)?.then === "function";
}

/** Called once per finished RPC, for metrics. */
export type RpcObserver = (event: { method: string; code: string; ms: number }) => void;

interface Scope {
  caller: string;
  providers: ReadonlySet<string> | undefined;
  resources: ReadonlySet<string> | undefined;
  userBinding: UserBinding | undefined;
}

const ANONYMOUS: Scope = { caller: "anonymous", providers: undefined, resources: undefined, userBinding: undefined };

function sameSet(a: ReadonlySet<string> | undefined, b: ReadonlySet<string> | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.size === b.size && [...a].every((x) => b.has(x));
}

/** Whether two admissions grant the same: the caller, its providers and resources, and whether it is bound to users. */
function sameScope(a: Scope, b: Scope): boolean {
  return a.caller === b.caller && sameSet(a.providers, b.providers) && sameSet(a.resources, b.resources) && (a.userBinding === undefined) === (b.userBinding === undefined);
}

/**
 * One call in flight, and the context its handler gets. Its abort signal is
 * made only when the handler asks for it: most calls never wait on anything
 * abortable, and an AbortController (and a cancel listener) per call showed
 * in profiles of the hot path.
 */
class ActiveCall implements CallContext {
  scope: Scope = ANONYMOUS;
  settled = false;
  logFields: Record<string, string> | undefined;
  /** The call's SERVER span and its context, when the call is traced. */
  span: Span | undefined;
  trace: TraceContext;
  /** Its slot in the chain's calls in flight, once admitted. */
  slot = -1;
  private controller: AbortController | undefined;
  private aborted = false;
  /** onAbort's listeners (no AbortController needed for them). */
  private abortListeners: Set<() => void> | undefined;
  private cancelWatched = false;

  constructor(
    private readonly chain: RpcChain,
    readonly call: IncomingCall,
    readonly started: number,
    private readonly done: CallDone<unknown>,
  ) {}

  get caller(): string {
    return this.scope.caller;
  }

  get providers(): ReadonlySet<string> | undefined {
    return this.scope.providers;
  }

  get resources(): ReadonlySet<string> | undefined {
    return this.scope.resources;
  }

  get userBinding(): UserBinding | undefined {
    return this.scope.userBinding;
  }

  get deadline(): number | undefined {
    return this.call.deadline;
  }

  get signal(): AbortSignal {
    if (!this.controller) {
      this.controller = new AbortController();
      if (this.aborted || this.call.isCancelled()) this.controller.abort();
      else this.watchCancel();
    }
    return this.controller.signal;
  }

  onAbort(listener: () => void): () => void {
    if (this.aborted || this.call.isCancelled()) {
      listener();
      return () => undefined;
    }
    (this.abortListeners ??= new Set()).add(listener);
    this.watchCancel();
    return () => this.abortListeners?.delete(listener);
  }

  /** Follows the transport's cancel once, for the signal and the listeners alike. */
  private watchCancel(): void {
    if (this.cancelWatched) return;
    this.cancelWatched = true;
    // grpc-js also reports "cancelled" after every answer it sends: by then there is nothing to abort.
    this.call.onCancel(() => !this.settled && this.abort());
  }

  abort(): void {
    if (this.aborted) return;
    this.aborted = true;
    this.controller?.abort();
    const listeners = this.abortListeners;
    this.abortListeners = undefined;
    if (listeners) for (const l of listeners) l();
  }

  settle(ok: boolean, outcome: unknown): void {
    if (this.settled) return;
    this.settled = true;
    // A caller that went away already has its answer from the transport (CANCELLED or DEADLINE_EXCEEDED): log that.
    if (this.call.isCancelled()) {
      ok = false;
      outcome = new CallCancelledError(pastDeadline(this.call) ? Code.DeadlineExceeded : Code.Canceled);
    }
    const status = ok ? undefined : toRpcStatus(outcome);
    this.chain.finished(this, status, outcome);
    if (status) this.done(new RpcFailure(status), undefined);
    else this.done(undefined, outcome);
  }
}

/**
 * The cross-cutting concerns of every RPC, shared by the gRPC listener
 * (grpc-js) and the HTTP listener (connect-node), each of which only
 * translates its own call objects into an IncomingCall:
 *
 * 1. authentication (bearer credential or verified client certificate),
 *    RPC and provider scopes, the caller's user binding (checked by the
 *    handlers, which know the user), and per-caller rate limits, with an
 *    audit line for every denial;
 * 2. the call's context for the domain: caller, scope, deadline, and a signal
 *    that aborts when the caller goes away or the server cuts calls off;
 * 3. error mapping through `toRpcStatus`, one log line and one metric per
 *    call (never a message body).
 */
export class RpcChain {
  /** The calls in flight, in a SlotSet: a long-lived `Set` with one member per call sends each call's objects to V8's old generation. */
  private readonly inflight = new SlotSet<ActiveCall>();
  private buckets = new Map<string, TokenBucket>();
  private directory!: CallerDirectory;
  private closed = false;

  constructor(
    directory: CallerDirectory,
    private readonly logger: Logger,
    private readonly observe?: RpcObserver,
    private readonly spans: Spans = NO_SPANS,
  ) {
    this.setCallers(directory);
  }

  /**
   * Swaps in a caller list (a configuration reload). Calls already admitted
   * keep their scope; a caller whose rate limit is unchanged keeps its bucket.
   */
  setCallers(directory: CallerDirectory): void {
    const buckets = new Map<string, TokenBucket>();
    for (const c of directory.callers) {
      if (!c.rateLimit) continue;
      const before = this.directory?.callers.find((o) => o.name === c.name)?.rateLimit;
      const same = before?.perSecond === c.rateLimit.perSecond && before.burst === c.rateLimit.burst;
      buckets.set(c.name, (same && this.buckets.get(c.name)) || new TokenBucket(c.rateLimit.perSecond, c.rateLimit.burst));
    }
    this.directory = directory;
    this.buckets = buckets;
    this.readmitStreams();
  }

  /**
   * Long-lived streams (WatchEvents) were admitted under the old caller list:
   * each is admitted again. One whose caller is gone or may no longer call it
   * ends with that refusal; one whose scope changed ends with UNAVAILABLE
   * (CALLER_CHANGED), so that it reconnects under the new scope.
   */
  private readmitStreams(): void {
    for (const active of this.inflight.values()) {
      if (!STREAMING_SERVICES.has(active.call.service)) continue;
      let outcome: unknown;
      try {
        const scope = this.admit(active.call);
        if (sameScope(scope, active.scope)) continue;
        outcome = new CallRefusedError(Code.Unavailable, "CALLER_CHANGED", "the caller's configuration changed; reconnect");
      } catch (err) {
        outcome = err;
      }
      active.abort();
      active.settle(false, outcome);
    }
  }

  /** Calls in flight on either listener. */
  get inflightCount(): number {
    return this.inflight.size;
  }

  /**
   * Runs one call: admits it, hands the handler its context, and settles
   * with the handler's result or an RpcFailure carrying the mapped status.
   */
  run<T>(call: IncomingCall, handler: (ctx: CallContext) => T | PromiseLike<T>): Promise<T> {
    return new Promise<T>((resolve, reject) => this.serve(call, handler, (failure, value) => (failure ? reject(failure) : resolve(value as T))));
  }

  /**
   * `run` without promises of its own, for the gRPC listener: `done` gets the
   * failure or the result. A handler that answers at once (a plain value, not
   * a promise) is settled, logged and answered before `serve` returns, so a
   * cached GetToken or a Health/Check makes no promise here and allocates
   * none.
   */
  serve<T>(call: IncomingCall, handler: (ctx: CallContext) => T | PromiseLike<T>, done: CallDone<T>): void {
    const active = new ActiveCall(this, call, performance.now(), done as CallDone<unknown>);
    let result: T | PromiseLike<T>;
    try {
      if (this.closed) throw new ShuttingDownError();
      active.scope = this.admit(call);
      // After admission: a caller without a valid credential cannot make the service record (or sample) anything.
      if (this.spans.enabled && !OPEN_SERVICES.has(call.service)) {
        const traced = this.startSpan(call);
        active.span = traced?.span;
        active.trace = traced?.ctx;
      }
      active.slot = this.inflight.add(active);
      result = handler(active);
    } catch (err) {
      active.settle(false, err);
      return;
    }
    // Outside the try: a listener's `done` that throws is its own failure, not the handler's.
    if (!isThenable(result)) {
      active.settle(true, result);
      return;
    }
    try {
      result.then(
        (value) => active.settle(true, value),
        (err: unknown) => active.settle(false, err),
      );
    } catch (err) {
      // A thenable whose `then` throws: the call still gets its answer.
      active.settle(false, err);
    }
  }

  /**
   * The end of the shutdown grace period: every call still in flight is
   * answered UNAVAILABLE (SHUTTING_DOWN) now and its work is aborted, and so
   * is every call that arrives from now on.
   */
  cutOff(): void {
    this.closed = true;
    for (const active of this.inflight.values()) {
      active.abort();
      active.settle(false, new ShuttingDownError());
    }
  }

  /** Called by each call as it settles: one log line and one metric. */
  finished(active: ActiveCall, status: RpcStatus | undefined, outcome: unknown): void {
    this.inflight.delete(active.slot, active);
    this.record(active.call, active.scope, active.started, status, outcome, active.logFields);
    if (active.span) endSpan(active.span, active.scope.caller, status, active.logFields);
  }

  /** The call's SERVER span, continuing the caller's trace when it sent a W3C traceparent. */
  private startSpan(call: IncomingCall) {
    return this.spans.startServer(`${call.service}/${call.method}`, (name) => call.header(name), () => {
      const peer = splitPeer(call.peer);
      return {
        "rpc.system": call.protocol === "connect" ? "connect_rpc" : "grpc",
        "rpc.service": call.service,
        "rpc.method": call.method,
        "network.peer.address": peer.address,
        ...(peer.port !== undefined ? { "network.peer.port": peer.port } : {}),
        "token_service.protocol": call.protocol,
      };
    });
  }

  /** Authentication, scopes and rate limit; throws CallRefusedError after writing the audit line. */
  private admit(call: IncomingCall): Scope {
    if (!this.directory.enabled || OPEN_SERVICES.has(call.service)) return ANONYMOUS;
    const who = this.directory.identify(call.authorization() ?? null, call.peerNames());
    if (who === "none" || who === "bad") {
      this.audit(call, null, who === "none" ? "no_credential" : "unknown_credential");
      throw new CallRefusedError(Code.Unauthenticated, "UNAUTHENTICATED", "a valid caller credential is required");
    }
    if (SCOPED_SERVICES.has(call.service) && who.rpcs && !who.rpcs.has(call.method as RpcName)) {
      this.audit(call, who.name, "rpc_not_allowed");
      throw new CallRefusedError(Code.PermissionDenied, "RPC_NOT_ALLOWED", `caller ${who.name} may not call ${call.method}`);
    }
    const bucket = this.buckets.get(who.name);
    if (bucket && !bucket.take()) {
      this.audit(call, who.name, "rate_limited");
      throw new CallRefusedError(Code.ResourceExhausted, "RATE_LIMITED", `caller ${who.name} is over its rate limit`);
    }
    // One comparison for callers without user binding (the default): GetToken's hot path.
    const userBinding =
      who.userBinding === "none" ? undefined : this.directory.bindingFor(who, who.userBinding === "assertion" ? call.header(USER_ASSERTION_HEADER) : undefined);
    return { caller: who.name, providers: who.providers, resources: who.resources, userBinding };
  }

  private audit(call: IncomingCall, caller: string | null, reason: string, extra?: Record<string, string>): void {
    this.logger.warn(
      { audit: true, event: "denied", caller, rpc: `${call.service}/${call.method}`, reason, peer: call.peer, protocol: call.protocol, ...extra },
      "call denied",
    );
  }

  /** One log line and one metric per call. */
  private record(
    call: IncomingCall,
    scope: Scope,
    started: number,
    status: RpcStatus | undefined,
    outcome: unknown,
    extra: Record<string, string> | undefined,
  ): void {
    const ms = Math.round((performance.now() - started) * 100) / 100;
    const method = `${call.service}/${call.method}`;
    const code = codeName(status?.code);
    // Probes and reflection are frequent and dull: debug level. Token service calls: info.
    const level = SCOPED_SERVICES.has(call.service) ? "info" : "debug";
    const fields = { rpc: method, ms, peer: call.peer, caller: scope.caller, protocol: call.protocol, code, ...extra };
    if (!status) {
      this.logger[level](fields, "rpc");
    } else if (status.known) {
      // The ErrorInfo reason (REAUTH_REQUIRED, SESSION_NOT_FOUND, …) names what went wrong.
      this.logger[level]({ ...fields, reason: status.reason }, "rpc");
      if (outcome instanceof PermissionDeniedError) this.audit(call, scope.caller, outcome.reason);
      if (outcome instanceof ResourceNotAllowedError) this.audit(call, scope.caller, outcome.reason, { resource: outcome.resource });
      if (outcome instanceof UserNotBoundError) this.audit(call, scope.caller, outcome.reason, { why: outcome.why });
    } else {
      // Unknown errors: keep the type and code for operators, never the message text.
      this.logger.error({ ...fields, err: errSummary(outcome), stack: stackOnly(outcome) }, "rpc failed with an unexpected error");
    }
    this.observe?.({ method, code, ms });
  }
}

/** gRPC codes that mean the server failed (the OpenTelemetry rule for server spans); others are answers. */
const SERVER_ERRORS = new Set([Code.Unknown, Code.DeadlineExceeded, Code.Unimplemented, Code.Internal, Code.Unavailable, Code.DataLoss]);

function endSpan(span: Span, caller: string, status: RpcStatus | undefined, fields: Record<string, string> | undefined): void {
  const code: number = status?.code ?? 0;
  span.setAttribute("rpc.grpc.status_code", code);
  span.setAttribute("token_service.caller", caller);
  if (fields?.resource !== undefined) span.setAttribute("token_service.resource", fields.resource);
  if (status?.reason) span.setAttribute("token_service.reason", status.reason);
  if (SERVER_ERRORS.has(code)) {
    span.setAttribute("error.type", codeName(code));
    span.setStatus({ code: SpanStatusCode.ERROR, message: codeName(code) });
  }
  span.end();
}

/** "1.2.3.4:5678", "[::1]:5678" or "unix:…" into an address and a port. */
function splitPeer(peer: string): { address: string; port: number | undefined } {
  const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(peer);
  return m ? { address: m[1]!, port: Number(m[2]) } : { address: peer, port: undefined };
}

function pastDeadline(call: IncomingCall): boolean {
  return call.deadline !== undefined && Date.now() >= call.deadline;
}

/** The first stack frames of an error, without its message (which may run over several lines and hold a secret). */
function stackOnly(err: unknown): string | undefined {
  if (!(err instanceof Error) || !err.stack) return undefined;
  return err.stack
    .split("\n")
    .filter((line) => /^\s+at /.test(line))
    .slice(0, 7)
    .join("\n");
}
