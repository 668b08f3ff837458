import type http from "node:http";
import type http2 from "node:http2";
import { BackchannelLogout, LogoutTokenError, UnknownLogoutProviderError } from "../authorization/backchannel-logout.js";
import { errSummary, type Logger } from "../logger.js";
import { ProviderUnavailableError, StoreUnavailableError } from "../sessions/errors.js";
import { createBackchannelLimiter } from "./backchannel-limit.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

export const BACKCHANNEL_LOGOUT_PATH = "/oidc/backchannel-logout/";
/** A logout token is a few KiB at most. */
const MAX_BODY_BYTES = 64 * 1024;

function answer(res: Response, status: number, body?: Record<string, string>): void {
  const text = body ? JSON.stringify(body) : "";
  const headers: Record<string, string | number> = { "content-type": "application/json", "cache-control": "no-store", "content-length": Buffer.byteLength(text) };
  if (status === 429) headers["retry-after"] = 1;
  res.writeHead(status, headers);
  res.end(text);
}

async function readForm(req: Request): Promise<URLSearchParams | "too_large"> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) return "too_large";
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString("utf8"));
}

/**
 * `POST /oidc/backchannel-logout/{provider_id}` (OpenID Connect Back-Channel
 * Logout 1.0) on the HTTP listener: a form with `logout_token`. 200 when the
 * token is valid (whether or not a session matched), 400 with an OAuth error
 * body when it is not, and nothing changes then; 429 past the rate limit per
 * client address and per provider (backchannel-limit.ts). Returns false for
 * any other path, which the Connect handler then serves.
 */
export function createBackchannelRoute(
  logout: BackchannelLogout,
  logger: Logger,
  allow: (address: string, provider: string) => boolean = createBackchannelLimiter(),
): (req: Request, res: Response) => boolean {
  return (req, res) => {
    const path = (req.url ?? "").split("?")[0]!;
    if (!path.startsWith(BACKCHANNEL_LOGOUT_PATH)) return false;
    let provider: string;
    try {
      provider = decodeURIComponent(path.slice(BACKCHANNEL_LOGOUT_PATH.length));
    } catch {
      provider = "";
    }
    const started = performance.now();
    const done = (status: number, fields: Record<string, unknown>, body?: Record<string, string>) => {
      logger.info({ backchannelLogout: true, provider, status, ms: Math.round(performance.now() - started), ...fields }, "back-channel logout");
      answer(res, status, body);
    };
    void (async () => {
      // Ids no provider has share one bucket: naming endless made-up providers cannot push the real ones' buckets out.
      if (!allow(req.socket?.remoteAddress ?? "", logout.knows(provider) ? provider : "\u0000unknown")) {
        return done(429, { reason: "rate_limited" }, { error: "temporarily_unavailable", error_description: "too many requests" });
      }
      if (req.method !== "POST") return done(405, { reason: "method" }, { error: "invalid_request", error_description: "use POST" });
      if (!/^application\/x-www-form-urlencoded\b/i.test(String(req.headers["content-type"] ?? ""))) {
        return done(400, { reason: "content_type" }, { error: "invalid_request", error_description: "expected a form" });
      }
      const form = await readForm(req);
      if (form === "too_large") return done(400, { reason: "too_large" }, { error: "invalid_request", error_description: "body too large" });
      const token = form.get("logout_token");
      if (!token) return done(400, { reason: "no_logout_token" }, { error: "invalid_request", error_description: "logout_token is required" });
      try {
        const result = await logout.handle(provider, token);
        done(200, { deleted: result.deleted, by: result.by });
      } catch (err) {
        if (err instanceof LogoutTokenError) return done(400, { reason: err.reason }, { error: "invalid_request", error_description: err.reason });
        if (err instanceof UnknownLogoutProviderError) {
          return done(400, { reason: "unknown_provider" }, { error: "invalid_request", error_description: "unknown provider" });
        }
        if (err instanceof StoreUnavailableError || err instanceof ProviderUnavailableError) {
          return done(503, { reason: "unavailable", err: errSummary(err) }, { error: "temporarily_unavailable" });
        }
        logger.error({ err: errSummary(err) }, "back-channel logout failed with an unexpected error");
        done(500, { reason: "internal" }, { error: "server_error" });
      }
    })().catch(() => undefined);
    return true;
  };
}
