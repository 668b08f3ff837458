import { createHash } from "node:crypto";
import { errors as joseErrors, jwtVerify, type JWTPayload } from "jose";
import type { Logger } from "../logger.js";
import type { ProviderRegistry } from "../providers/provider-client.js";
import { ProviderUnavailableError } from "../sessions/errors.js";
import type { UserSessions } from "../sessions/user-sessions.js";

const LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout";
/** A logout token without `exp` is remembered (for its replay check) and accepted this long after its `iat`. */
const MAX_AGE_SECONDS = 600;
const CLOCK_TOLERANCE_SECONDS = 60;

/** Why a logout token is refused (answered 400, nothing changed). */
export class LogoutTokenError extends Error {
  override name = "LogoutTokenError";
  constructor(readonly reason: string) {
    super(`logout token refused: ${reason}`);
  }
}

/** The provider id names no provider. */
export class UnknownLogoutProviderError extends Error {
  override name = "UnknownLogoutProviderError";
}

export interface BackchannelLogoutDeps {
  registry: ProviderRegistry;
  users: UserSessions;
  providerTimeoutMs: number;
  logger: Logger;
}

/**
 * OpenID Connect Back-Channel Logout 1.0: validates a provider's logout token
 * (section 2.6) and deletes the sessions it names: every session of that
 * provider with the token's `sid`, or, without one, with its `sub`.
 */
export class BackchannelLogout {
  constructor(private readonly deps: BackchannelLogoutDeps) {}

  /** Whether a provider of this id is configured (the route's rate limit keys unknown ids together). */
  knows(providerId: string): boolean {
    return this.deps.registry.get(providerId) !== undefined;
  }

  async handle(providerId: string, logoutToken: string): Promise<{ deleted: number; by: "sid" | "sub" }> {
    const provider = this.deps.registry.get(providerId);
    if (!provider) throw new UnknownLogoutProviderError(providerId);
    const options = { deadline: Date.now() + this.deps.providerTimeoutMs };
    let metadata: Awaited<ReturnType<typeof provider.metadata>>;
    let keys: Awaited<ReturnType<typeof provider.signingKeys>>;
    try {
      metadata = await provider.metadata(options);
      keys = await provider.signingKeys(options);
    } catch (err) {
      throw new ProviderUnavailableError("metadata_unreachable", provider.id, { cause: err });
    }
    let claims: JWTPayload;
    try {
      ({ payload: claims } = await jwtVerify(logoutToken, keys, {
        issuer: metadata.issuer,
        audience: provider.config.clientId,
        requiredClaims: ["iat", "jti"],
        clockTolerance: CLOCK_TOLERANCE_SECONDS,
        maxTokenAge: `${MAX_AGE_SECONDS}s`,
        algorithms: (metadata.id_token_signing_alg_values_supported as string[] | undefined)?.filter((a) => a !== "none") ?? ["RS256"],
      }));
    } catch (err) {
      // The provider's keys could not be fetched: not the token's fault, and worth another try.
      if (err instanceof joseErrors.JWKSTimeout || !(err instanceof joseErrors.JOSEError)) {
        throw new ProviderUnavailableError("jwks_unreachable", provider.id, { cause: err });
      }
      throw new LogoutTokenError(err.code.toLowerCase());
    }
    const events = claims.events as Record<string, unknown> | undefined;
    if (!events || typeof events !== "object" || typeof events[LOGOUT_EVENT] !== "object" || events[LOGOUT_EVENT] === null) {
      throw new LogoutTokenError("missing_logout_event");
    }
    if (claims.nonce !== undefined) throw new LogoutTokenError("nonce_present");
    const sid = typeof claims.sid === "string" && claims.sid !== "" ? claims.sid : undefined;
    const sub = typeof claims.sub === "string" && claims.sub !== "" ? claims.sub : undefined;
    if (!sid && !sub) throw new LogoutTokenError("neither_sub_nor_sid");
    if (typeof claims.jti !== "string" || claims.jti === "") throw new LogoutTokenError("missing_jti");
    const iat = claims.iat!;
    const expiresAt = new Date(Math.max(claims.exp ?? 0, iat + MAX_AGE_SECONDS) * 1000 + CLOCK_TOLERANCE_SECONDS * 1000);
    const seen = { id: createHash("sha256").update(`${provider.id}\u0000${claims.jti}`).digest("hex"), provider: provider.id, expiresAt };
    const by = sid ? { sid } : { subject: sub! };
    const rows = await this.deps.users.logout(provider.id, by, seen, { caller: `provider:${provider.id}` });
    if (rows === "replayed") throw new LogoutTokenError("replayed_jti");
    return { deleted: rows.length, by: sid ? "sid" : "sub" };
  }
}
