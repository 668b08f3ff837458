import { errSummary, type Logger } from "../logger.js";
import type { Tracing } from "./setup.js";
import { NO_SPANS, type Spans } from "./spans.js";

/** The service's tracing: what every part records spans into. */
export interface AppTracing {
  readonly spans: Spans;
  /** Sends the last spans to the collector; a failure is logged, never thrown. */
  close(): Promise<void>;
}

/** Tracing from `tracing` (made by `serve` from the OTEL_* variables), or none: then spans cost nothing. */
export function createTracing(tracing: Tracing | undefined, logger: Logger): AppTracing {
  return {
    spans: tracing?.spans ?? NO_SPANS,
    async close() {
      await tracing?.shutdown().catch((err: unknown) => logger.warn({ err: errSummary(err) }, "could not export the last spans"));
    },
  };
}
