import type { GatewayError } from "./openai-error.js";
import { noSessionError, type TokenSourceOptions } from "./token-source.js";

/**
 * The token service's forwarding proxy (docs/forwarding.md) as the way to
 * the model server and the tool servers: the gateway sends each request to
 * `{url}/forward/{target}/…` naming the user, and the token service adds
 * the user's token. The gateway never holds one.
 */
export interface ProxyOptions {
  /** The token service's HTTP listener, e.g. http://127.0.0.1:50052. */
  url: string;
  /** The forward target of the model server, e.g. "models". Each tool server's target has the tool server's name. */
  models: string;
}

/** The headers that name the caller (the gateway) and the user to the proxy. */
export function proxyHeaders(credential: string | undefined, user: string): Record<string, string> {
  return { ...(credential ? { authorization: `Bearer ${credential}` } : {}), "x-token-service-user": user };
}

/** The base URL of one forward target. */
export function targetUrl(proxy: ProxyOptions, target: string): string {
  return `${proxy.url.replace(/\/+$/, "")}/forward/${target}`;
}

/** The proxy's own 401 for a user without a usable session, as the gateway's answer; undefined for anything else (an upstream's 401). */
export function proxyRefusal(body: unknown, options: Pick<TokenSourceOptions, "loginUrl" | "provider">): GatewayError | undefined {
  const b = body as { error?: unknown; reason?: unknown } | null;
  if (b?.error !== "no_usable_session") return undefined;
  return b.reason === "REAUTH_REQUIRED" || b.reason === "RESOURCE_NOT_GRANTED" || b.reason === "SESSION_NOT_FOUND" ? noSessionError(b.reason, options) : undefined;
}
