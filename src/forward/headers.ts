import type { IncomingHttpHeaders } from "node:http";

/** Headers that name the user or session to the proxy; never sent on. */
export const USER_HEADER = "x-token-service-user";
export const SESSION_HEADER = "x-token-service-session";
const SERVICE_PREFIX = "x-token-service-";

/**
 * Hop-by-hop fields (RFC 9110 §7.6.1, and the ones RFC 9113 §8.2.2 forbids
 * in HTTP/2): they describe one connection, not the message, and are not
 * forwarded in either direction. Fields named in `Connection` are dropped too.
 */
const HOP_BY_HOP = new Set([
  "connection",
  "keep-alive",
  "proxy-connection",
  "proxy-authenticate",
  "proxy-authorization",
  "te",
  "trailer",
  "transfer-encoding",
  "upgrade",
  "http2-settings",
]);

/** What the caller sends that the upstream never sees: its own credentials and cookies, and what the proxy sets itself. */
const REQUEST_DROPPED = new Set(["authorization", "cookie", "host", "content-length", "expect", "x-user-assertion"]);
/** What the upstream sends that the caller never sees (the proxy frames the body itself). */
const RESPONSE_DROPPED = new Set(["set-cookie"]);

/** Header names a target may not use for its token: the proxy owns them, or they are per connection. */
export function reservedHeader(name: string): boolean {
  const n = name.toLowerCase();
  return HOP_BY_HOP.has(n) || n === "host" || n === "content-length" || n === "cookie" || n.startsWith(SERVICE_PREFIX) || n.startsWith(":");
}

/** The fields a `Connection` header names, lower case. */
function connectionOptions(value: string | string[] | undefined): Set<string> {
  const all = Array.isArray(value) ? value.join(",") : (value ?? "");
  return new Set(all.split(",").map((s) => s.trim().toLowerCase()).filter((s) => s !== ""));
}

/** Copies `headers` without hop-by-hop fields, the ones `Connection` names, HTTP/2 pseudo-headers and `drop`. */
function endToEnd(headers: IncomingHttpHeaders, drop: (name: string) => boolean): Record<string, string | string[]> {
  const named = connectionOptions(headers.connection);
  const out: Record<string, string | string[]> = {};
  for (const [name, value] of Object.entries(headers)) {
    if (value === undefined || name.startsWith(":") || HOP_BY_HOP.has(name) || named.has(name) || drop(name)) continue;
    out[name] = value;
  }
  return out;
}

/**
 * The headers sent upstream: the caller's end-to-end headers without its
 * Authorization, cookies and x-token-service-* fields, then the token in
 * `header` (`Bearer <token>` in Authorization, the token alone elsewhere).
 */
export function upstreamHeaders(headers: IncomingHttpHeaders, header: string, token: string | undefined): Record<string, string | string[]> {
  const out = endToEnd(headers, (name) => REQUEST_DROPPED.has(name) || name === header || name.startsWith(SERVICE_PREFIX));
  if (token !== undefined) out[header] = header === "authorization" ? `Bearer ${token}` : token;
  const length = headers["content-length"];
  if (typeof length === "string" && headers["transfer-encoding"] === undefined) out["content-length"] = length;
  return out;
}

/** The headers sent back to the caller: the upstream's end-to-end headers (cookies of the upstream stay with the proxy). */
export function callerHeaders(headers: IncomingHttpHeaders | Record<string, string | string[] | undefined>): Record<string, string | string[]> {
  return endToEnd(headers as IncomingHttpHeaders, (name) => RESPONSE_DROPPED.has(name));
}
