import { Counter, Histogram, type Registry } from "prom-client";
import type { TokenSource } from "./tokens.js";

const BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300];

/** The forwarding proxy's metrics, in the service's registry. Labels are target ids, status classes and token sources: never a user, a session or a token. */
export class ForwardMetrics {
  private readonly total: Counter<"target" | "status_class" | "token_source">;
  private readonly firstByte: Histogram<"target">;
  private readonly duration: Histogram<"target" | "status_class">;

  constructor(registry: Registry) {
    const registers = [registry];
    this.total = new Counter({
      name: "token_service_forward_requests_total",
      help: "Requests through /forward/{target}/…, by target, HTTP status class of the answer (1xx-5xx) and where the injected token came from (session, audience, fallback, none).",
      labelNames: ["target", "status_class", "token_source"],
      registers,
    });
    this.firstByte = new Histogram({
      name: "token_service_forward_first_byte_seconds",
      help: "From a forwarded request's arrival to the upstream's response headers, by target (a retry after a refresh included).",
      labelNames: ["target"],
      buckets: BUCKETS,
      registers,
    });
    this.duration = new Histogram({
      name: "token_service_forward_duration_seconds",
      help: "From a forwarded request's arrival to the end of its answer (a stream's whole life), by target and HTTP status class.",
      labelNames: ["target", "status_class"],
      buckets: BUCKETS,
      registers,
    });
  }

  /** The upstream answered with its headers, `seconds` after the request arrived. */
  firstByteAfter(target: string, seconds: number): void {
    this.firstByte.observe({ target }, seconds);
  }

  /** One forwarded request ended: `status` is what the caller got (0: the connection closed before an answer). */
  finished(target: string, status: number, tokenSource: TokenSource, seconds: number): void {
    const statusClass = status >= 100 && status < 600 ? `${Math.floor(status / 100)}xx` : "none";
    this.total.inc({ target, status_class: statusClass, token_source: tokenSource });
    this.duration.observe({ target, status_class: statusClass }, seconds);
  }
}
