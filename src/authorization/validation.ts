import { isLoopbackHost } from "../config.js";
import { InvalidArgumentError } from "../sessions/errors.js";
export { checkResources } from "../sessions/validation.js";

/** Provider ids: as in the YAML file. */
export const PROVIDER_ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
/** A scope token (RFC 6749, section 3.3). */
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;
const MAX_URL_CHARS = 2048;

/**
 * An absolute http(s) URL without a fragment. Plain http only when
 * `allowInsecureHttp` and the host is loopback (local development).
 */
export function checkUrl(value: string, field: string, allowInsecureHttp: boolean): URL {
  if (value.length > MAX_URL_CHARS) throw new InvalidArgumentError(field, `must be at most ${MAX_URL_CHARS} characters`);
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw new InvalidArgumentError(field, "must be an absolute URL");
  }
  if (url.protocol !== "https:" && url.protocol !== "http:") throw new InvalidArgumentError(field, "must be an http(s) URL");
  if (url.hash !== "") throw new InvalidArgumentError(field, "must not have a fragment");
  if (url.username !== "" || url.password !== "") throw new InvalidArgumentError(field, "must not hold credentials");
  if (url.protocol === "http:" && !(allowInsecureHttp && isLoopbackHost(url.hostname.replace(/^\[|\]$/g, "")))) {
    throw new InvalidArgumentError(field, "must use https (plain http is accepted for a loopback host with allow_insecure_http)");
  }
  return url;
}

export function checkProviderId(value: string, field = "id"): string {
  if (!PROVIDER_ID_PATTERN.test(value)) throw new InvalidArgumentError(field, "must be 1-64 letters, digits, '_', '.' or '-'");
  return value;
}

export function checkScopes(values: string[], field = "scopes"): string[] {
  if (values.length > 64) throw new InvalidArgumentError(field, "must list at most 64 scopes");
  for (const s of values) if (!SCOPE_TOKEN.test(s) || s.length > 256) throw new InvalidArgumentError(field, `"${s.slice(0, 40)}" is not a scope token`);
  return values;
}
