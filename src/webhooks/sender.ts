import { fetch as undiciFetch } from "undici";
import type { WebhookEndpoint } from "../config.js";
import type { Logger } from "../logger.js";
import { createGuardedFetch } from "../providers/guarded-fetch.js";
import type { FetchLike } from "../providers/observed-fetch.js";
import { findRefusal, type OutboundPolicy } from "../providers/outbound-policy.js";
import { retryAfterMs } from "./backoff.js";
import type { SignedHeaders } from "./signer.js";

/** How one attempt went: the HTTP status (0: no answer), why it failed, and the receiver's Retry-After. */
export interface AttemptResult {
  status: number;
  /** Undefined on a 2xx; else http_<status>, timeout, connection or destination_not_allowed. */
  error: string | undefined;
  retryAfterMs: number | undefined;
}

/** Sends one attempt of a delivery to its webhook. */
export type Send = (endpoint: WebhookEndpoint, headers: SignedHeaders, body: string) => Promise<AttemptResult>;

/**
 * Attempts through the outbound policy of runtime providers (webhook URLs
 * are not exempt): no private or loopback address unless allowed, the
 * address pinned in the connection's lookup, no redirects (a 3xx is a
 * failure), the answer's body read only up to outbound.max_response_bytes
 * and discarded. Each attempt, answer included, ends within `timeoutMs`.
 */
export function createSender(deps: { policy: OutboundPolicy; logger: Logger; timeoutMs: () => number; fetch?: FetchLike }): Send {
  const inner = deps.fetch ?? (undiciFetch as unknown as FetchLike);
  const fetchers = new Map<string, FetchLike>();
  const fetcherOf = (id: string) => {
    let f = fetchers.get(id);
    if (!f) {
      f = createGuardedFetch({ policy: deps.policy, inner, provider: `webhook:${id}`, exempt: false, insecureAllowed: true, logger: deps.logger, originOnly: true });
      fetchers.set(id, f);
    }
    return f;
  };
  return async (endpoint, headers, body) => {
    const signal = AbortSignal.timeout(deps.timeoutMs());
    try {
      const response = await fetcherOf(endpoint.id)(endpoint.url, {
        method: "POST",
        headers: { "content-type": "application/json", "user-agent": "token-service-webhooks", ...headers },
        body,
        signal,
      });
      // The answer's body is read (capped) so the connection can be reused; its content is not looked at.
      await response.arrayBuffer().catch(() => undefined);
      const ok = response.status >= 200 && response.status < 300;
      return { status: response.status, error: ok ? undefined : `http_${response.status}`, retryAfterMs: retryAfterMs(response.headers.get("retry-after"), new Date()) };
    } catch (err) {
      if (findRefusal(err)) return { status: 0, error: "destination_not_allowed", retryAfterMs: undefined };
      return { status: 0, error: signal.aborted ? "timeout" : "connection", retryAfterMs: undefined };
    }
  };
}
