import { fetch as undiciFetch } from "undici";
import type { Logger } from "../logger.js";
import type { FetchLike } from "./observed-fetch.js";
import { findRefusal, type DestinationNotAllowedError, type OutboundPolicy } from "./outbound-policy.js";

/** A provider's response body was longer than outbound.max_response_bytes; reading stopped there. */
export class ResponseTooLargeError extends Error {
  override name = "ResponseTooLargeError";
  readonly code = "RESPONSE_TOO_LARGE";
  constructor(readonly limit: number) {
    super(`response body larger than ${limit} bytes`);
  }
}

/** Who a guarded fetch speaks for. */
export interface GuardedFetchOptions {
  policy: OutboundPolicy;
  /** The fetch underneath (tests wrap one); by default undici's, which honours the policy's dispatcher. */
  inner?: FetchLike;
  provider: string;
  /** YAML providers are the operator's own: no address rules, but the body cap. */
  exempt: boolean;
  /** Whether this provider was registered with allow_insecure_http (still needs outbound.allow_insecure_http). */
  insecureAllowed: boolean;
  logger: Logger;
  /** Logs show the URL's origin only (a webhook URL's path may be a credential of the receiver's). */
  originOnly?: boolean;
}

const NULL_BODY_STATUS = new Set([101, 103, 204, 205, 304]);

/** `response` with a body that errors (and cancels the transfer) once more than `limit` bytes arrived. */
export function capBody(response: Response, limit: number, onCut: () => void): Response {
  const declared = Number(response.headers.get("content-length") ?? "");
  const source = response.body;
  let body: ReadableStream<Uint8Array> | null = null;
  if (source && !NULL_BODY_STATUS.has(response.status)) {
    const reader = source.getReader();
    let seen = 0;
    body = new ReadableStream<Uint8Array>({
      async pull(controller) {
        if (Number.isFinite(declared) && declared > limit) {
          onCut();
          await reader.cancel().catch(() => undefined);
          return controller.error(new ResponseTooLargeError(limit));
        }
        const { done, value } = await reader.read();
        if (done) return controller.close();
        seen += value.byteLength;
        if (seen > limit) {
          onCut();
          await reader.cancel().catch(() => undefined);
          return controller.error(new ResponseTooLargeError(limit));
        }
        controller.enqueue(value);
      },
      cancel: (reason) => reader.cancel(reason),
    });
  }
  const capped = new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
  Object.defineProperty(capped, "url", { value: response.url });
  return capped;
}

/** A URL as logs show it: no query, no user-info (and no path, for `originOnly`). */
function shown(url: URL, originOnly = false): string {
  return originOnly ? url.origin : `${url.origin}${url.pathname}`;
}

/** The log line of a destination the outbound policy refused: the provider, the URL (no query), the rule and the range. */
export function logRefusal(logger: Logger, provider: string, url: URL, refusal: DestinationNotAllowedError, originOnly = false): void {
  logger.warn({ provider, url: shown(url, originOnly), rule: refusal.rule, range: refusal.range }, "outbound request refused by the outbound policy");
}

/**
 * The one fetch every provider request goes through: the outbound policy
 * picks (or refuses) the connection, redirects are never followed, and the
 * body is capped at outbound.max_response_bytes while it is read.
 */
export function createGuardedFetch(options: GuardedFetchOptions): FetchLike {
  const { policy, provider, logger } = options;
  const inner = options.inner ?? (undiciFetch as unknown as FetchLike);
  return async (url, init) => {
    const target = new URL(url);
    /** A refusal (before connecting, or in the connection's lookup) is logged and thrown unwrapped; anything else as it came. */
    const rethrow = (err: unknown): never => {
      const refusal = findRefusal(err);
      if (!refusal) throw err;
      logRefusal(logger, provider, target, refusal, options.originOnly);
      throw refusal;
    };
    let response: Response;
    try {
      const dispatcher = policy.dispatcherFor(target, options.exempt, options.insecureAllowed);
      response = await inner(url, { ...init, redirect: "manual", dispatcher } as unknown as RequestInit);
    } catch (err) {
      return rethrow(err);
    }
    const limit = policy.settings.maxResponseBytes;
    return capBody(response, limit, () =>
      logger.warn({ provider, url: shown(target, options.originOnly), maxResponseBytes: limit }, "provider response body larger than outbound.max_response_bytes; reading stopped"),
    );
  };
}
