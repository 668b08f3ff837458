import type { ProviderConfig } from "../config.js";
import type { BearerChallenge } from "../providers/challenge.js";

/** What decides the scopes of one authorization request. */
export interface ScopeInputs {
  /** StartAuthorization's `scopes`. */
  requested: string[];
  /** StartAuthorization's `challenge`, parsed. */
  challenge: BearerChallenge | undefined;
  /** For a step-up: the session's granted scopes. */
  granted: string[] | undefined;
  config: ProviderConfig;
  /** The authorization server's `scopes_supported`, if it lists them. */
  serverScopes: unknown;
  /** Whether the server speaks OpenID Connect. */
  openid: boolean;
}

function union(...lists: string[][]): string[] {
  return [...new Set(lists.flat())];
}

/**
 * The scopes to ask for, as the MCP authorization spec orders them
 * ("Scope Selection Strategy", "Step-Up Authorization Flow"):
 *
 * - the caller's `scopes`, when given;
 * - else the challenge's `scope`;
 * - else, for a provider found from a protected resource, the `scope` of
 *   the resource's 401 challenge, then its metadata's `scopes_supported`;
 * - else the provider's `scopes`, else `openid offline_access` for an
 *   OpenID Connect provider, else none.
 *
 * A step-up asks for the union of the session's granted scopes with the
 * caller's and the challenge's. Scopes that came from a resource (or a
 * step-up) get `offline_access` added when the authorization server lists it,
 * so the session can still be refreshed (2026-07-28 revision, "Refresh Tokens").
 */
export function selectScopes(input: ScopeInputs): string[] {
  const challenged = input.challenge?.scopes ?? [];
  const runtime = input.config.runtime;
  let chosen: string[];
  let fromResource = true;
  if (input.granted !== undefined && input.granted.length + input.requested.length + challenged.length > 0) {
    chosen = union(input.granted, input.requested, challenged);
  } else if (input.requested.length > 0) {
    chosen = input.requested;
    fromResource = false;
  } else if (challenged.length > 0) {
    chosen = challenged;
  } else if (runtime?.challengeScopes?.length) {
    chosen = runtime.challengeScopes;
  } else if (runtime?.scopesSupported?.length) {
    chosen = runtime.scopesSupported;
  } else {
    chosen = input.config.scopes ?? (input.openid ? ["openid", "offline_access"] : []);
    fromResource = false;
  }
  const offline = Array.isArray(input.serverScopes) && input.serverScopes.includes("offline_access");
  return fromResource && offline && chosen.length > 0 ? union(chosen, ["offline_access"]) : chosen;
}
