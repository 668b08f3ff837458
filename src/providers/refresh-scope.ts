import type { ProviderConfig } from "../config.js";
import type { Logger } from "../logger.js";

/**
 * The `scope` a refresh sends, or undefined to send none. RFC 6749 §6: an
 * omitted scope means the scope originally granted, and a scope sent must not
 * exceed it. So none is sent unless the provider has `refresh_scopes`, and
 * then only those of them the session was granted (`granted`: what the token
 * response said, else what was asked). A session whose granted scope is
 * unknown (empty), or that holds none of them, sends none.
 */
export function refreshScope(refreshScopes: readonly string[] | undefined, granted: string | undefined): string | undefined {
  if (!refreshScopes?.length || !granted) return undefined;
  const held = new Set(granted.split(" ").filter(Boolean));
  const sent = refreshScopes.filter((s) => held.has(s));
  return sent.length ? sent.join(" ") : undefined;
}

/**
 * One warning per YAML provider that has `scopes` and no `refresh_scopes`:
 * `scopes` used to be sent on refresh and no longer is. Logged at start-up
 * and on each reload (`trigger` says which).
 */
export function warnScopesNotSentOnRefresh(logger: Logger, providers: readonly ProviderConfig[], trigger: string): void {
  for (const p of providers) {
    if (p.source !== "config" || !p.scopes?.length || p.refreshScopes !== undefined) continue;
    logger.warn(
      { provider: p.id, trigger, scopes: p.scopes },
      "providers[].scopes are no longer sent on refresh (refresh keeps the granted scope); set refresh_scopes to down-scope refreshes",
    );
  }
}
