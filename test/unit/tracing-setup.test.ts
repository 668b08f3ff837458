import { describe, expect, it } from "vitest";
import { ConfigError } from "../../src/config.js";
import { samplerFromEnv, tracingFromEnv } from "../../src/tracing/setup.js";

const db = { "db.system.name": "sqlite" };
const ENDPOINT = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" };

/** The start-up summary of tracing from these variables (undefined: off); shuts the tracing down again. */
async function summary(env: Record<string, string>): Promise<string | undefined> {
  const tracing = tracingFromEnv(env, { db });
  try {
    expect(tracing.spans.enabled).toBe(tracing.summary !== undefined);
    return tracing.summary;
  } finally {
    await tracing.shutdown();
  }
}

describe("tracing from the OTEL_* variables", () => {
  it("is off without them, with exporter none, and with OTEL_SDK_DISABLED", async () => {
    expect(await summary({})).toBeUndefined();
    expect(await summary({ OTEL_SERVICE_NAME: "x", OTEL_TRACES_SAMPLER: "always_on" })).toBeUndefined();
    expect(await summary({ ...ENDPOINT, OTEL_TRACES_EXPORTER: "none" })).toBeUndefined();
    expect(await summary({ ...ENDPOINT, OTEL_SDK_DISABLED: "true" })).toBeUndefined();
  });

  it("turns on with an OTLP endpoint or a named exporter, in each OTLP protocol", async () => {
    expect(await summary(ENDPOINT)).toBe("traces to otlp (http/protobuf), sampler parentbased_always_on");
    expect(await summary({ OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: "http://127.0.0.1:4318/v1/traces" })).toBe("traces to otlp (http/protobuf), sampler parentbased_always_on");
    expect(await summary({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" })).toContain("otlp (http/json)");
    expect(await summary({ OTEL_TRACES_EXPORTER: "otlp", OTEL_EXPORTER_OTLP_TRACES_PROTOCOL: "grpc" })).toContain("otlp (grpc)");
    expect(await summary({ OTEL_TRACES_EXPORTER: "console,otlp" })).toBe("traces to console, otlp (http/protobuf), sampler parentbased_always_on");
  });

  it("reads every standard sampler and its ratio", () => {
    expect(samplerFromEnv({}).name).toBe("parentbased_always_on");
    for (const name of ["always_on", "always_off", "parentbased_always_on", "parentbased_always_off"]) expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: name }).name).toBe(name);
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: "0.01" }).name).toBe("traceidratio 0.01");
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "parentbased_traceidratio" }).name).toBe("parentbased_traceidratio 1");
    expect(samplerFromEnv({ OTEL_TRACES_SAMPLER: "TraceIdRatio", OTEL_TRACES_SAMPLER_ARG: "0" }).sampler.toString()).toContain("0");
  });

  it("refuses a bad exporter, protocol, sampler or ratio, naming the variable", () => {
    expect(() => tracingFromEnv({ OTEL_TRACES_EXPORTER: "zipkin" }, { db })).toThrow(new ConfigError('OTEL_TRACES_EXPORTER: unknown exporter "zipkin" (use otlp, console or none)'));
    expect(() => tracingFromEnv({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "udp" }, { db })).toThrow(/^OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "udp"/);
    expect(() => tracingFromEnv({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "sometimes" }, { db })).toThrow(/^OTEL_TRACES_SAMPLER: unknown sampler "sometimes"/);
    for (const arg of ["1.5", "-0.1", "half"]) {
      expect(() => samplerFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: arg })).toThrow(`OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1 (got "${arg}")`);
    }
  });
});
