import type http from "node:http";
import type http2 from "node:http2";
import type { Dispatcher } from "undici";

/** What the forward route reads of a request and of an upstream's answer. */

type Request = http.IncomingMessage | http2.Http2ServerRequest;

export const FORWARD_PATH = "/forward/";

/** `/forward/{target}{/path…}{?query}` split; undefined when the path holds dot segments (which could climb out of the target's base path). */
export function splitForwardUrl(url: string): { target: string; rest: string } | undefined {
  const tail = url.slice(FORWARD_PATH.length);
  const end = tail.search(/[/?]/);
  const target = end === -1 ? tail : tail.slice(0, end);
  let rest = end === -1 ? "" : tail.slice(end);
  if (rest.startsWith("?")) rest = `/${rest}`;
  const path = rest.split("?")[0]!;
  for (const segment of path.split("/")) {
    let decoded: string;
    try {
      decoded = decodeURIComponent(segment);
    } catch {
      return undefined;
    }
    if (decoded === "." || decoded === ".." || decoded.includes("/") || decoded.includes("\\")) return undefined;
  }
  return { target, rest };
}

/** A 401 invalid_token challenge (RFC 6750 §3.1): the token itself was refused, a new one may pass. */
export function invalidToken(answer: Dispatcher.ResponseData): boolean {
  if (answer.statusCode !== 401) return false;
  const challenge = answer.headers["www-authenticate"];
  const text = Array.isArray(challenge) ? challenge.join(", ") : (challenge ?? "");
  return /^\s*Bearer\b/i.test(text) && /\berror\s*=\s*"?invalid_token"?/i.test(text);
}

/** Whether the request has a body to send on: framed as one in HTTP/1.1, or an HTTP/2 stream not ended with its headers. */
export function hasBody(req: Request): boolean {
  if (req.httpVersionMajor >= 2) return (req as http2.Http2ServerRequest).stream.endAfterHeaders === false;
  const length = req.headers["content-length"];
  return req.headers["transfer-encoding"] !== undefined || (length !== undefined && length !== "0");
}

/** A request header's (first) value. */
export function header(req: Request, name: string): string | undefined {
  const value = req.headers[name];
  return Array.isArray(value) ? value[0] : value;
}
