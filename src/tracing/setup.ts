import { OTLPTraceExporter as GrpcExporter } from "@opentelemetry/exporter-trace-otlp-grpc";
import { OTLPTraceExporter as JsonExporter } from "@opentelemetry/exporter-trace-otlp-http";
import { OTLPTraceExporter as ProtoExporter } from "@opentelemetry/exporter-trace-otlp-proto";
import { resourceFromAttributes } from "@opentelemetry/resources";
import {
  AlwaysOffSampler,
  AlwaysOnSampler,
  BasicTracerProvider,
  BatchSpanProcessor,
  ConsoleSpanExporter,
  ParentBasedSampler,
  TraceIdRatioBasedSampler,
  type Sampler,
  type SpanExporter,
  type SpanProcessor,
} from "@opentelemetry/sdk-trace-base";
import { ConfigError } from "../config.js";
import { Spans, type DbAttributes } from "./spans.js";

/** Tracing as configured by the standard OTEL_* variables, and how to stop it. */
export interface Tracing {
  readonly spans: Spans;
  /** One line for the start-up log: exporters, protocol and sampler (never endpoint headers). */
  readonly summary: string | undefined;
  /** Exports what is buffered now. */
  flush(): Promise<void>;
  /** Exports what is buffered and stops. */
  shutdown(): Promise<void>;
}

type Env = Record<string, string | undefined>;

const TRACER_NAME = "token-service";

/**
 * Tracing from the OpenTelemetry environment variables. It is off unless
 * configured: OTEL_TRACES_EXPORTER names an exporter other than `none`, or an
 * OTLP endpoint (OTEL_EXPORTER_OTLP_ENDPOINT or
 * OTEL_EXPORTER_OTLP_TRACES_ENDPOINT) is set. OTEL_SDK_DISABLED=true turns it
 * off whatever else is set.
 *
 * - exporters: `otlp` (protocol from OTEL_EXPORTER_OTLP_TRACES_PROTOCOL or
 *   OTEL_EXPORTER_OTLP_PROTOCOL: `http/protobuf`, the default, `http/json` or
 *   `grpc`) and `console`; the OTLP exporters read their endpoint, headers,
 *   timeout and certificates from the standard variables themselves;
 * - OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG (default
 *   `parentbased_always_on`);
 * - OTEL_SERVICE_NAME (default `token-service`) and OTEL_RESOURCE_ATTRIBUTES;
 * - OTEL_BSP_* for the batch span processor.
 *
 * Nothing is registered globally: the tracer provider, the W3C propagator
 * and the span contexts (passed down explicitly, see Spans) belong to this
 * service alone.
 */
export function tracingFromEnv(env: Env, options: { db: DbAttributes; exporters?: SpanExporter[] }): Tracing {
  const exporters = options.exporters ?? exportersFromEnv(env);
  if (exporters.length === 0) return { spans: new Spans(undefined, options.db), summary: undefined, flush: async () => undefined, shutdown: async () => undefined };
  const sampler = samplerFromEnv(env);
  const processors: SpanProcessor[] = exporters.map((e) => new BatchSpanProcessor(e, batchOptions(env)));
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      ...resourceAttributes(env.OTEL_RESOURCE_ATTRIBUTES),
      "service.name": env.OTEL_SERVICE_NAME || TRACER_NAME,
    }),
    sampler: sampler.sampler,
    spanProcessors: processors,
  });
  const names = exporters.map((e) => (e instanceof ConsoleSpanExporter ? "console" : `otlp (${otlpProtocol(env)})`));
  return {
    spans: new Spans(provider.getTracer(TRACER_NAME), options.db),
    summary: `traces to ${names.join(", ")}, sampler ${sampler.name}`,
    flush: () => provider.forceFlush(),
    async shutdown() {
      await provider.shutdown();
    },
  };
}

function exportersFromEnv(env: Env): SpanExporter[] {
  if (flag(env.OTEL_SDK_DISABLED)) return [];
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  const names = (env.OTEL_TRACES_EXPORTER ?? (endpoint ? "otlp" : "none"))
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "");
  if (names.includes("none")) return [];
  return names.map((name) => {
    switch (name) {
      case "otlp":
        return otlpExporter(env);
      case "console":
        return new ConsoleSpanExporter();
      default:
        throw new ConfigError(`OTEL_TRACES_EXPORTER: unknown exporter "${name}" (use otlp, console or none)`);
    }
  });
}

function otlpProtocol(env: Env): string {
  return (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || "http/protobuf").trim();
}

function otlpExporter(env: Env): SpanExporter {
  const protocol = otlpProtocol(env);
  switch (protocol) {
    case "http/protobuf":
      return new ProtoExporter();
    case "http/json":
      return new JsonExporter();
    case "grpc":
      return new GrpcExporter();
    default:
      throw new ConfigError(`OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "${protocol}" (use http/protobuf, http/json or grpc)`);
  }
}

/** The sampler the variables name; a bad name or ratio stops start-up with the variable named. */
export function samplerFromEnv(env: Env): { sampler: Sampler; name: string } {
  const name = (env.OTEL_TRACES_SAMPLER || "parentbased_always_on").trim().toLowerCase();
  const ratio = () => {
    const raw = env.OTEL_TRACES_SAMPLER_ARG;
    if (raw === undefined || raw.trim() === "") return 1;
    const n = Number(raw);
    if (!Number.isFinite(n) || n < 0 || n > 1) throw new ConfigError(`OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1 (got "${raw}")`);
    return n;
  };
  switch (name) {
    case "always_on":
      return { sampler: new AlwaysOnSampler(), name };
    case "always_off":
      return { sampler: new AlwaysOffSampler(), name };
    case "traceidratio": {
      const r = ratio();
      return { sampler: new TraceIdRatioBasedSampler(r), name: `${name} ${r}` };
    }
    case "parentbased_always_on":
      return { sampler: new ParentBasedSampler({ root: new AlwaysOnSampler() }), name };
    case "parentbased_always_off":
      return { sampler: new ParentBasedSampler({ root: new AlwaysOffSampler() }), name };
    case "parentbased_traceidratio": {
      const r = ratio();
      return { sampler: new ParentBasedSampler({ root: new TraceIdRatioBasedSampler(r) }), name: `${name} ${r}` };
    }
    default:
      throw new ConfigError(
        `OTEL_TRACES_SAMPLER: unknown sampler "${name}" (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)`,
      );
  }
}

function batchOptions(env: Env) {
  const num = (v: string | undefined) => (v !== undefined && v.trim() !== "" && Number.isFinite(Number(v)) ? Number(v) : undefined);
  return {
    scheduledDelayMillis: num(env.OTEL_BSP_SCHEDULE_DELAY),
    exportTimeoutMillis: num(env.OTEL_BSP_EXPORT_TIMEOUT),
    maxQueueSize: num(env.OTEL_BSP_MAX_QUEUE_SIZE),
    maxExportBatchSize: num(env.OTEL_BSP_MAX_EXPORT_BATCH_SIZE),
  };
}

/** OTEL_RESOURCE_ATTRIBUTES: comma-separated key=value pairs, values percent-encoded. */
function resourceAttributes(raw: string | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of (raw ?? "").split(",")) {
    const i = pair.indexOf("=");
    if (i <= 0) continue;
    try {
      out[pair.slice(0, i).trim()] = decodeURIComponent(pair.slice(i + 1).trim());
    } catch {
      // A malformed value is skipped, as the specification asks.
    }
  }
  return out;
}

function flag(v: string | undefined): boolean {
  return v?.trim().toLowerCase() === "true";
}
