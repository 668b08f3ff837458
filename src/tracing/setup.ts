import type { SpanExporter } from "@opentelemetry/sdk-trace-base";
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

export type Env = Record<string, string | undefined>;

/** An exporter OTEL_TRACES_EXPORTER names. */
export type ExporterName = "console" | "otlp";
/** An OTLP protocol OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names. */
export type OtlpProtocol = "http/protobuf" | "http/json" | "grpc";
const PROTOCOLS: readonly string[] = ["http/protobuf", "http/json", "grpc"] satisfies OtlpProtocol[];

/** The sampler OTEL_TRACES_SAMPLER and OTEL_TRACES_SAMPLER_ARG name, checked. */
export interface SamplerSpec {
  /** The sampler's name, lower case (`parentbased_always_on`). */
  kind: string;
  /** The ratio of the ratio samplers. */
  ratio: number | undefined;
  /** For the start-up log: the kind, and the ratio if it has one. */
  name: string;
}

const SAMPLERS = ["always_on", "always_off", "traceidratio", "parentbased_always_on", "parentbased_always_off", "parentbased_traceidratio"];

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
 * service alone. The OpenTelemetry SDK and the one exporter configured are
 * loaded only when tracing is on (`sdk.ts`): with tracing off they would be
 * a few MB of V8 heap that every full garbage collection walks.
 */
export async function tracingFromEnv(env: Env, options: { db: DbAttributes; exporters?: SpanExporter[] }): Promise<Tracing> {
  const names = options.exporters ? [] : exporterNames(env);
  if ((options.exporters ?? names).length === 0) {
    return { spans: new Spans(undefined, options.db), summary: undefined, flush: async () => undefined, shutdown: async () => undefined };
  }
  // Checked only when an OTLP exporter is to be made; given exporters are named with it as it is.
  const protocol = names.includes("otlp") ? otlpProtocol(env) : otlpProtocolName(env);
  const sampler = samplerSpec(env);
  const { startTracing } = await import("./sdk.js");
  return startTracing(env, { db: options.db, exporters: options.exporters, names, protocol, sampler });
}

/** The exporters OTEL_TRACES_EXPORTER names (an OTLP endpoint alone means `otlp`); none when tracing is off. */
function exporterNames(env: Env): ExporterName[] {
  if (flag(env.OTEL_SDK_DISABLED)) return [];
  const endpoint = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT || env.OTEL_EXPORTER_OTLP_ENDPOINT;
  const names = (env.OTEL_TRACES_EXPORTER ?? (endpoint ? "otlp" : "none"))
    .split(",")
    .map((s) => s.trim().toLowerCase())
    .filter((s) => s !== "");
  if (names.includes("none")) return [];
  for (const name of names) {
    if (name !== "otlp" && name !== "console") throw new ConfigError(`OTEL_TRACES_EXPORTER: unknown exporter "${name}" (use otlp, console or none)`);
  }
  return names as ExporterName[];
}

function otlpProtocolName(env: Env): string {
  return (env.OTEL_EXPORTER_OTLP_TRACES_PROTOCOL || env.OTEL_EXPORTER_OTLP_PROTOCOL || "http/protobuf").trim();
}

function otlpProtocol(env: Env): OtlpProtocol {
  const protocol = otlpProtocolName(env);
  if (!PROTOCOLS.includes(protocol)) {
    throw new ConfigError(`OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "${protocol}" (use http/protobuf, http/json or grpc)`);
  }
  return protocol as OtlpProtocol;
}

/** The sampler the variables name; a bad name or ratio stops start-up with the variable named. */
export function samplerSpec(env: Env): SamplerSpec {
  const kind = (env.OTEL_TRACES_SAMPLER || "parentbased_always_on").trim().toLowerCase();
  if (!SAMPLERS.includes(kind)) {
    throw new ConfigError(
      `OTEL_TRACES_SAMPLER: unknown sampler "${kind}" (use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio)`,
    );
  }
  if (!kind.endsWith("traceidratio")) return { kind, ratio: undefined, name: kind };
  const raw = env.OTEL_TRACES_SAMPLER_ARG;
  const ratio = raw === undefined || raw.trim() === "" ? 1 : Number(raw);
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new ConfigError(`OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1 (got "${raw}")`);
  return { kind, ratio, name: `${kind} ${ratio}` };
}

function flag(v: string | undefined): boolean {
  return v?.trim().toLowerCase() === "true";
}
