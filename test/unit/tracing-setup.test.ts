import { spawnSync } from "node:child_process";
import { describe, expect, it } from "vitest";
import { ConfigError } from "../../src/config.js";
import { samplerFromEnv } from "../../src/tracing/sdk.js";
import { tracingFromEnv } from "../../src/tracing/setup.js";

const db = { "db.system.name": "sqlite" };
const ENDPOINT = { OTEL_EXPORTER_OTLP_ENDPOINT: "http://127.0.0.1:4318" };

/** The start-up summary of tracing from these variables (undefined: off); shuts the tracing down again. */
async function summary(env: Record<string, string>): Promise<string | undefined> {
  const tracing = await tracingFromEnv(env, { db });
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
    // No exporters given: off too, whatever the variables say.
    expect((await tracingFromEnv(ENDPOINT, { db, exporters: [] })).summary).toBeUndefined();
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

  it("refuses a bad exporter, protocol, sampler or ratio, naming the variable", async () => {
    await expect(tracingFromEnv({ OTEL_TRACES_EXPORTER: "zipkin" }, { db })).rejects.toThrow(new ConfigError('OTEL_TRACES_EXPORTER: unknown exporter "zipkin" (use otlp, console or none)'));
    await expect(tracingFromEnv({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "udp" }, { db })).rejects.toThrow(/^OTEL_EXPORTER_OTLP_PROTOCOL: unknown protocol "udp"/);
    await expect(tracingFromEnv({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "sometimes" }, { db })).rejects.toThrow(/^OTEL_TRACES_SAMPLER: unknown sampler "sometimes"/);
    // Tracing off: a sampler it would not use is not read, as before.
    expect((await tracingFromEnv({ OTEL_TRACES_SAMPLER: "sometimes" }, { db })).summary).toBeUndefined();
    for (const arg of ["1.5", "-0.1", "half"]) {
      expect(() => samplerFromEnv({ OTEL_TRACES_SAMPLER: "traceidratio", OTEL_TRACES_SAMPLER_ARG: arg })).toThrow(`OTEL_TRACES_SAMPLER_ARG: must be a number from 0 to 1 (got "${arg}")`);
    }
  });
});

describe("what tracing loads", () => {
  /** The @opentelemetry packages a fresh Node process imports while it sets tracing up from `env`, and the summary. */
  function loaded(env: Record<string, string>): { packages: string[]; summary: string; status: number | null; stderr: string } {
    const hooks = `export async function resolve(specifier, context, next) {
      if (specifier.startsWith("@opentelemetry/")) (await import("node:fs")).writeSync(2, "resolve " + specifier + "\\n");
      return next(specifier, context);
    }`;
    const register = `import { register } from "node:module"; register(${JSON.stringify(`data:text/javascript,${encodeURIComponent(hooks)}`)});`;
    const setup = new URL("../../src/tracing/setup.ts", import.meta.url).href;
    const script = `const { tracingFromEnv } = await import(${JSON.stringify(setup)});
      const t = await tracingFromEnv(JSON.parse(process.env.TRACING_ENV), { db: { "db.system.name": "sqlite" } });
      process.stdout.write(t.summary ?? "off");
      await t.shutdown();`;
    const out = spawnSync(process.execPath, ["--import", "tsx", "--import", `data:text/javascript,${encodeURIComponent(register)}`, "--input-type=module", "-e", script], {
      env: { PATH: process.env.PATH, TRACING_ENV: JSON.stringify(env) },
      encoding: "utf8",
    });
    const packages = [...new Set([...out.stderr.matchAll(/^resolve (@opentelemetry\/[^/\s]+)/gm)].map((m) => m[1]!))].sort();
    return { packages, summary: out.stdout, status: out.status, stderr: out.stderr };
  }

  it("loads no OpenTelemetry SDK or exporter while tracing is off, and only the configured exporter when it is on", () => {
    expect(loaded({})).toMatchObject({ status: 0, packages: ["@opentelemetry/api", "@opentelemetry/core"], summary: "off" });
    const on = loaded({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "http/json" });
    expect(on.status, on.stderr).toBe(0);
    expect(on.summary).toBe("traces to otlp (http/json), sampler parentbased_always_on");
    expect(on.packages).toEqual(expect.arrayContaining(["@opentelemetry/sdk-trace-base", "@opentelemetry/exporter-trace-otlp-http"]));
    expect(on.packages).not.toContain("@opentelemetry/exporter-trace-otlp-proto");
    expect(on.packages).not.toContain("@opentelemetry/exporter-trace-otlp-grpc");
    const grpcOn = loaded({ ...ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL: "grpc" });
    expect(grpcOn.summary).toBe("traces to otlp (grpc), sampler parentbased_always_on");
    expect(grpcOn.packages).toContain("@opentelemetry/exporter-trace-otlp-grpc");
    expect(grpcOn.packages).not.toContain("@opentelemetry/exporter-trace-otlp-http");
  }, 30_000);

  it("refuses a bad sampler before it loads the SDK", () => {
    const bad = loaded({ ...ENDPOINT, OTEL_TRACES_SAMPLER: "sometimes" });
    expect(bad.status).not.toBe(0);
    expect(bad.stderr).toContain('OTEL_TRACES_SAMPLER: unknown sampler "sometimes"');
    expect(bad.packages).toEqual(["@opentelemetry/api", "@opentelemetry/core"]);
  }, 30_000);
});
