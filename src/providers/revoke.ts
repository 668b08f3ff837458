import type { Logger } from "../logger.js";
import { classifyProviderError } from "./errors.js";
import type { CallOptions, ProviderClient } from "./provider-client.js";

/**
 * Best-effort RFC 7009 revocation of a session's refresh token, then its
 * access token. Failures are logged (by code, never a token) and swallowed:
 * the session is gone here either way. Returns whether the provider was told.
 */
export async function revokeTokens(
  provider: ProviderClient,
  tokens: { refresh?: string | undefined; access?: string | undefined },
  options: CallOptions,
  log: Logger,
): Promise<boolean> {
  let told = false;
  for (const [token, hint] of [
    [tokens.refresh, "refresh_token"],
    [tokens.access, "access_token"],
  ] as const) {
    if (!token) continue;
    try {
      if (!(await provider.revoke(token, hint, options))) {
        log.info("provider has no revocation endpoint; tokens only deleted here");
        return false;
      }
      told = true;
      log.info({ hint }, "revoked at the provider");
    } catch (err) {
      log.warn({ hint, code: classifyProviderError(err).code }, "revocation at the provider failed; session deleted here anyway");
    }
  }
  return told;
}
