import type { ServerResponse } from "node:http";

/**
 * An error answer in the shape OpenAI-compatible clients understand:
 * `{ "error": { "message", "type", "code" } }`, plus `login_url` when the
 * user has to sign in again and the gateway knows where.
 *
 * Messages are written by the gateway itself, never copied from an upstream
 * or token-service error, so that no token can end up in them.
 */
export interface GatewayError {
  status: number;
  message: string;
  type: string;
  code: string;
  loginUrl?: string;
  /** Seconds, sent as Retry-After. */
  retryAfter?: number;
}

/** Writes a GatewayError as JSON, unless the response has already started. */
export function sendError(res: ServerResponse, err: GatewayError): void {
  if (res.headersSent) {
    res.destroy();
    return;
  }
  const body: { error: Record<string, string | null> } = {
    error: { message: err.message, type: err.type, param: null, code: err.code },
  };
  if (err.loginUrl) body.error.login_url = err.loginUrl;
  const headers: Record<string, string> = { "content-type": "application/json", "cache-control": "no-store" };
  if (err.retryAfter !== undefined) headers["retry-after"] = String(err.retryAfter);
  res.writeHead(err.status, headers);
  res.end(JSON.stringify(body));
}
