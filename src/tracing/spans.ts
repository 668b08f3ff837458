import {
  ROOT_CONTEXT,
  SpanKind,
  SpanStatusCode,
  trace,
  type Attributes,
  type Context,
  type Span,
  type TextMapGetter,
  type Tracer,
} from "@opentelemetry/api";
import { W3CTraceContextPropagator } from "@opentelemetry/core";
import { sessionRef } from "../logger.js";

/**
 * The trace a piece of work belongs to, passed down explicitly (the call's
 * context, then the refresh's): undefined when tracing is off or the trace
 * is not sampled, and then nothing below creates a span.
 */
export type TraceContext = Context | undefined;

/** A span's kind and attributes, and its parent: `root` starts a trace of its own. */
export interface SpanOptions {
  kind?: SpanKind;
  attributes?: Attributes;
  root?: boolean;
}

/** The attributes every database span carries: which database, which table, which statement. */
export type DbAttributes = Attributes & { "db.system.name": string };

const w3c = new W3CTraceContextPropagator();

/**
 * The service's spans. The parent of each span is passed explicitly (a
 * TraceContext) rather than kept in AsyncLocalStorage: async context hooks
 * cost every promise in the process, sampled or not, and the 1 % sampling
 * target leaves no room for that. With tracing off there is no tracer, and
 * with a trace not sampled there is no context: every method then runs its
 * function and creates nothing, so the hot path pays one branch.
 *
 * Spans never carry a token, a secret, a caller credential or a full
 * session id: attributes are names, codes, outcomes, a session's short
 * hash (`sessionAttributes`) and resource URIs (identifiers without query or
 * credentials, checked before they get here). Errors set the span status to
 * the error's name or code, never to its message, which may quote an
 * upstream body.
 */
export class Spans {
  constructor(
    private readonly tracer: Tracer | undefined,
    /** `db.system.name` of the service's database, for database spans. */
    readonly db: DbAttributes = { "db.system.name": "sqlite" },
  ) {}

  get enabled(): boolean {
    return this.tracer !== undefined;
  }

  /**
   * Runs `fn` in a new span, ended when `fn` settles (a throw marks it as an
   * error), and hands `fn` the context its own children take. Without a
   * parent (and not `root`), or when the sampler drops the span, `fn` runs
   * with neither.
   */
  run<T>(name: string, parent: TraceContext, options: SpanOptions, fn: (span: Span | undefined, ctx: TraceContext) => Promise<T>): Promise<T> {
    const started = this.begin(name, parent, options);
    if (!started) return fn(undefined, undefined);
    const { span, ctx } = started;
    let work: Promise<T>;
    try {
      work = fn(span, ctx);
    } catch (err) {
      // A function that throws before it returns a promise still ends its span.
      work = Promise.reject(err as Error);
    }
    return work.then(
      (value) => {
        span.end();
        return value;
      },
      (err: unknown) => {
        failSpan(span, err);
        span.end();
        throw err;
      },
    );
  }

  /** Starts a span under `parent` (or a root one) that the caller ends; undefined when there is none to record. */
  begin(name: string, parent: TraceContext, options: SpanOptions = {}): { span: Span; ctx: Context } | undefined {
    const tracer = this.tracer;
    if (!tracer || (!parent && !options.root)) return undefined;
    const from = options.root ? ROOT_CONTEXT : parent!;
    const span = tracer.startSpan(name, { kind: options.kind ?? SpanKind.INTERNAL, attributes: options.attributes, root: options.root }, from);
    if (!span.isRecording()) return undefined;
    return { span, ctx: trace.setSpan(from, span) };
  }

  /** A span under `parent` that starts and ends now (a cache hit, a decision): no work runs inside it. */
  mark(name: string, parent: TraceContext, attributes: Attributes): void {
    this.begin(name, parent, { attributes })?.span.end();
  }

  /**
   * Starts the SERVER span of a call, whose parent is the caller's W3C
   * `traceparent` (and `tracestate`), read through `header`. Undefined when
   * tracing is off or the sampler drops the call: then nothing in the call
   * is traced. `attributes` are made only for a span that records.
   */
  startServer(name: string, header: (name: string) => string | undefined, attributes: () => Attributes): { span: Span; ctx: Context } | undefined {
    const tracer = this.tracer;
    if (!tracer) return undefined;
    const parent = w3c.extract(ROOT_CONTEXT, header, headerGetter);
    const span = tracer.startSpan(name, { kind: SpanKind.SERVER }, parent);
    if (!span.isRecording()) return undefined;
    span.setAttributes(attributes());
    return { span, ctx: trace.setSpan(parent, span) };
  }

  /** Adds `traceparent` (and `tracestate`) for the span of `ctx` to outgoing headers. */
  inject(ctx: Context, headers: Record<string, string>): void {
    w3c.inject(ctx, headers, { set: (carrier, key, value) => (carrier[key] = value) });
  }
}

const headerGetter: TextMapGetter<(name: string) => string | undefined> = {
  get: (read, key) => read(key),
  keys: () => [],
};

/** Spans that do nothing, for parts built without tracing (tests, CLI commands). */
export const NO_SPANS = new Spans(undefined);

/** A session in span attributes: its provider and the short hash the logs use, never the id itself. */
export function sessionAttributes(sessionId: string, provider: string): Attributes {
  return { "token_service.session.ref": sessionRef(sessionId), "token_service.provider": provider };
}

/** Marks a span failed with the error's code or name, and its reason when it has one (never its message). */
function failSpan(span: Span, err: unknown): void {
  const e = (err && typeof err === "object" ? err : {}) as { name?: unknown; code?: unknown; reason?: unknown };
  const type = typeof e.code === "string" ? e.code : typeof e.name === "string" ? e.name : "Error";
  span.setAttribute("error.type", type);
  if (typeof e.reason === "string") span.setAttribute("token_service.reason", e.reason);
  span.setStatus({ code: SpanStatusCode.ERROR, message: type });
}
