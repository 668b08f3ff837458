import { derivedTokenKey } from "../db/audience-repository.js";
import { classifyProviderError } from "../providers/errors.js";
import { advertisesIdJag, redeemIdJag, requestIdJag } from "../providers/id-jag.js";
import type { ProviderClient } from "../providers/provider-client.js";
import { NoIdTokenError, ProviderUnavailableError } from "../sessions/errors.js";
import { secondsLeft } from "../sessions/expiry.js";
import { AssertionRejectedError, IdJagNotSupportedError, IdJagRefusedError } from "../sessions/id-jag-errors.js";
import type { DerivedGrant } from "./audience.js";

/**
 * An ID token with less than this left is not presented: the IdP session is
 * refreshed first (an IdP refuses an expired ID token, and one about to
 * expire may be expired by the time it checks it).
 */
export const ID_TOKEN_MIN_VALIDITY_SECONDS = 30;

/** A provider's 4xx (but 429) is its refusal; anything else (5xx, 429, network, timeout) is it being unavailable. */
function refusedOr(err: unknown, provider: string, refused: (code: string, cause: Error) => Error): Error {
  const e = classifyProviderError(err);
  const status = e.options.status;
  if (status !== undefined && status >= 400 && status < 500 && status !== 429) return refused(e.code, e);
  return new ProviderUnavailableError(e.code, provider, { cause: e });
}

/**
 * Enterprise-managed authorization (ID-JAG) for one provider: the user's ID
 * token at `idp` is exchanged for an ID-JAG (RFC 8693), which the provider's
 * authorization server redeems with the JWT bearer grant (RFC 7523) for an
 * access token for its resource. The authorization server's metadata must
 * advertise the ID-JAG profile, checked before anything is sent.
 */
export function createIdJagGrant(provider: ProviderClient, idp: ProviderClient): DerivedGrant {
  const resource = provider.config.defaultResource ?? "";
  return {
    key: derivedTokenKey(provider.id, resource),
    provider,
    subjectStale: (row, now) => row.idExpiresAt === null || secondsLeft(row.idExpiresAt, now) < ID_TOKEN_MIN_VALIDITY_SECONDS,
    async obtain(idToken, options) {
      if (idToken === undefined) throw new NoIdTokenError();
      const metadata = await provider.metadata(options).catch((err: unknown) => {
        throw new ProviderUnavailableError(classifyProviderError(err).code, provider.id, { cause: err });
      });
      if (!advertisesIdJag(metadata)) throw new IdJagNotSupportedError(provider.id);
      const scope = provider.config.scopes?.join(" ");
      const idJag = await requestIdJag(idp, idToken, { audience: metadata.issuer, resource, scope }, options).catch((err: unknown) => {
        throw refusedOr(err, idp.id, (code, cause) => new IdJagRefusedError(code, idp.id, { cause }));
      });
      return redeemIdJag(provider, idJag.accessToken, options).catch((err: unknown) => {
        throw refusedOr(err, provider.id, (code, cause) => new AssertionRejectedError(code, provider.id, { cause }));
      });
    },
  };
}
