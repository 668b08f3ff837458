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
import { samplerSpec, type Env, type ExporterName, type OtlpProtocol, type SamplerSpec, type Tracing } from "./setup.js";
import { Spans, type DbAttributes } from "./spans.js";

/**
 * The OpenTelemetry SDK side of tracing, loaded by `tracingFromEnv` only when
 * tracing is on; the variables were checked there (setup.ts).
 */

const TRACER_NAME = "token-service";

export interface TracingStart {
  db: DbAttributes;
  /** Exporters to use instead of the ones the variables name (tests). */
  exporters: SpanExporter[] | undefined;
  names: ExporterName[];
  /** Checked (an OtlpProtocol) when `names` has `otlp`; else only named in the summary. */
  protocol: string;
  sampler: SamplerSpec;
}

export async function startTracing(env: Env, o: TracingStart): Promise<Tracing> {
  const exporters = o.exporters ?? (await Promise.all(o.names.map((name) => (name === "console" ? new ConsoleSpanExporter() : otlpExporter(o.protocol as OtlpProtocol)))));
  const processors: SpanProcessor[] = exporters.map((e) => new BatchSpanProcessor(e, batchOptions(env)));
  const provider = new BasicTracerProvider({
    resource: resourceFromAttributes({
      ...resourceAttributes(env.OTEL_RESOURCE_ATTRIBUTES),
      "service.name": env.OTEL_SERVICE_NAME || TRACER_NAME,
    }),
    sampler: samplerOf(o.sampler),
    spanProcessors: processors,
  });
  const names = exporters.map((e) => (e instanceof ConsoleSpanExporter ? "console" : `otlp (${o.protocol})`));
  return {
    spans: new Spans(provider.getTracer(TRACER_NAME), o.db),
    summary: `traces to ${names.join(", ")}, sampler ${o.sampler.name}`,
    flush: () => provider.forceFlush(),
    async shutdown() {
      await provider.shutdown();
    },
  };
}

/** The OTLP exporter of one protocol; each reads its endpoint, headers, timeout and certificates from the standard variables. */
async function otlpExporter(protocol: OtlpProtocol): Promise<SpanExporter> {
  switch (protocol) {
    case "http/protobuf":
      return new (await import("@opentelemetry/exporter-trace-otlp-proto")).OTLPTraceExporter();
    case "http/json":
      return new (await import("@opentelemetry/exporter-trace-otlp-http")).OTLPTraceExporter();
    case "grpc":
      return new (await import("@opentelemetry/exporter-trace-otlp-grpc")).OTLPTraceExporter();
  }
}

function samplerOf(spec: SamplerSpec): Sampler {
  const ratio = () => new TraceIdRatioBasedSampler(spec.ratio ?? 1);
  switch (spec.kind) {
    case "always_on":
      return new AlwaysOnSampler();
    case "always_off":
      return new AlwaysOffSampler();
    case "traceidratio":
      return ratio();
    case "parentbased_always_off":
      return new ParentBasedSampler({ root: new AlwaysOffSampler() });
    case "parentbased_traceidratio":
      return new ParentBasedSampler({ root: ratio() });
    case "parentbased_always_on":
      return new ParentBasedSampler({ root: new AlwaysOnSampler() });
    default:
      throw new Error(`sampler ${spec.kind} was not checked by samplerSpec`);
  }
}

/** The sampler the variables name, built; a bad name or ratio stops start-up with the variable named. */
export function samplerFromEnv(env: Env): { sampler: Sampler; name: string } {
  const spec = samplerSpec(env);
  return { sampler: samplerOf(spec), name: spec.name };
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
