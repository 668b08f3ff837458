import { SpanKind, SpanStatusCode, type Span } from "@opentelemetry/api";
import { NO_SPANS, type Spans, type TraceContext } from "../tracing/spans.js";

/** The fetch used for provider calls; tests may wrap it to observe or fail calls. */
export type FetchLike = (url: string, init: RequestInit) => Promise<Response>;

/** What watches provider HTTP requests: a CLIENT span each, and a latency metric. */
export interface ProviderTelemetry {
  readonly spans: Spans;
  /** One request: provider id, endpoint, the HTTP status ("error" when no answer came) and its duration. */
  observe(provider: string, endpoint: string, status: string, seconds: number): void;
}

export const NO_TELEMETRY: ProviderTelemetry = { spans: NO_SPANS, observe: () => undefined };

/**
 * `fetchImpl` with every request measured and, when `parent` is a traced
 * call's or refresh's context, inside a CLIENT span whose `traceparent` goes
 * to the provider with the request.
 * Every provider request passes here, whether its endpoint came from
 * discovery or from the YAML file: discovery, token, revocation, JWKS and
 * registration. The span's URL has no query or user-info, and no header or
 * body is recorded.
 */
export function observedFetch(fetchImpl: FetchLike, telemetry: ProviderTelemetry, provider: string, endpoint: string, parent?: TraceContext): FetchLike {
  return (url, init) => {
    // No trace (tracing off, or the call not sampled): measured only, and no URL parsed for attributes.
    if (!parent) return measured(fetchImpl, telemetry, provider, endpoint, url, init, undefined);
    const method = (init.method ?? "GET").toUpperCase();
    const u = new URL(url);
    return telemetry.spans.run(
      `${method} ${endpoint}`,
      parent,
      {
        kind: SpanKind.CLIENT,
        attributes: {
          "http.request.method": method,
          "url.full": `${u.origin}${u.pathname}`,
          "server.address": u.hostname,
          "server.port": Number(u.port || (u.protocol === "https:" ? 443 : 80)),
          "token_service.provider": provider,
          "token_service.endpoint": endpoint,
        },
      },
      (span, ctx) => {
        if (!ctx) return measured(fetchImpl, telemetry, provider, endpoint, url, init, undefined);
        const headers = new Headers(init.headers);
        const carrier: Record<string, string> = {};
        telemetry.spans.inject(ctx, carrier);
        for (const [k, v] of Object.entries(carrier)) headers.set(k, v);
        return measured(fetchImpl, telemetry, provider, endpoint, url, { ...init, headers }, span);
      },
    );
  };
}

async function measured(
  fetchImpl: FetchLike,
  telemetry: ProviderTelemetry,
  provider: string,
  endpoint: string,
  url: string,
  init: RequestInit,
  span: Span | undefined,
): Promise<Response> {
  const started = performance.now();
  let response: Response;
  try {
    response = await fetchImpl(url, init);
  } catch (err) {
    telemetry.observe(provider, endpoint, "error", (performance.now() - started) / 1000);
    throw err;
  }
  telemetry.observe(provider, endpoint, String(response.status), (performance.now() - started) / 1000);
  if (span) {
    span.setAttribute("http.response.status_code", response.status);
    if (response.status >= 400) {
      span.setAttribute("error.type", String(response.status));
      span.setStatus({ code: SpanStatusCode.ERROR, message: String(response.status) });
    }
  }
  return response;
}
