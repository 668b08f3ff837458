/**
 * A `WWW-Authenticate` header value as RFC 7235 (section 4.1) writes it,
 * and its Bearer challenge as RFC 6750 (section 3) and RFC 9728 (section
 * 5.1) give it meaning. The value comes from a tool server, which is
 * untrusted: the parser is strict, bounded, and never throws anything but
 * ChallengeSyntaxError.
 */

/** Longest header value parsed; real challenges are a few hundred characters. */
export const MAX_CHALLENGE_CHARS = 4096;
/** Most scopes a challenge may name. */
export const MAX_CHALLENGE_SCOPES = 64;

/** A Bearer challenge's parameters that this service acts on. */
export interface BearerChallenge {
  /** `error`: invalid_request, invalid_token, insufficient_scope, or another code (RFC 6750 section 3.1). */
  error: string | undefined;
  /** `scope`, split into scope tokens; empty when absent. */
  scopes: string[];
  /** `resource_metadata` (RFC 9728), as written; never fetched here. */
  resourceMetadata: string | undefined;
}

/** The header value does not parse; `why` is safe to show (it never quotes the value). */
export class ChallengeSyntaxError extends Error {
  override name = "ChallengeSyntaxError";
  constructor(readonly why: string) {
    super(`challenge ${why}`);
  }
}

const TCHAR = /[!#$%&'*+\-.^_`|~0-9A-Za-z]/;
const TOKEN68_TAIL = /[A-Za-z0-9\-._~+/]/;
/** RFC 6750: error and scope characters. */
const ERROR_VALUE = /^[\x20\x21\x23-\x5B\x5D-\x7E]+$/;
const SCOPE_TOKEN = /^[\x21\x23-\x5B\x5D-\x7E]+$/;

/** One challenge: its scheme and parameters (names in lower case), or a token68. */
interface Challenge {
  scheme: string;
  params: Map<string, string>;
}

/** A cursor over the header value. */
class Reader {
  i = 0;
  constructor(readonly s: string) {}
  get done(): boolean {
    return this.i >= this.s.length;
  }
  peek(offset = 0): string {
    return this.s[this.i + offset] ?? "";
  }
  skipWhitespace(): void {
    while (this.peek() === " " || this.peek() === "\t") this.i++;
  }
  token(): string {
    const start = this.i;
    while (TCHAR.test(this.peek())) this.i++;
    return this.s.slice(start, this.i);
  }
  quoted(): string {
    this.i++;
    let out = "";
    for (;;) {
      const c = this.peek();
      if (c === "") throw new ChallengeSyntaxError("has an unterminated quoted string");
      this.i++;
      if (c === '"') return out;
      if (c === "\\") {
        const next = this.peek();
        if (!/^[\t\x20-\x7E]$/.test(next)) throw new ChallengeSyntaxError("has a bad escape in a quoted string");
        out += next;
        this.i++;
      } else if (/^[\t\x20-\x7E]$/.test(c)) {
        out += c;
      } else {
        throw new ChallengeSyntaxError("has a character that is not allowed in a quoted string");
      }
    }
  }
}

/** Whether the reader is at `name =` (an auth-param), without moving it. */
function atParam(r: Reader): boolean {
  const save = r.i;
  const name = r.token();
  r.skipWhitespace();
  const is = name !== "" && r.peek() === "=";
  r.i = save;
  return is;
}

/** Parses every challenge of a WWW-Authenticate value (RFC 7235: `1#challenge`). */
function parseChallenges(value: string): Challenge[] {
  const r = new Reader(value);
  const challenges: Challenge[] = [];
  for (;;) {
    while (r.peek() === "," || r.peek() === " " || r.peek() === "\t") r.i++;
    if (r.done) break;
    const scheme = r.token();
    if (scheme === "") throw new ChallengeSyntaxError("does not start with an authentication scheme");
    const challenge: Challenge = { scheme: scheme.toLowerCase(), params: new Map() };
    challenges.push(challenge);
    if (r.peek() !== " " && r.peek() !== "\t") {
      if (!r.done && r.peek() !== ",") throw new ChallengeSyntaxError("has a malformed authentication scheme");
      continue;
    }
    r.skipWhitespace();
    if (!atParam(r)) {
      // A token68 (RFC 7235 section 2.1), or nothing before the next challenge.
      const start = r.i;
      while (TOKEN68_TAIL.test(r.peek())) r.i++;
      while (r.peek() === "=") r.i++;
      if (r.i === start && !r.done && r.peek() !== ",") throw new ChallengeSyntaxError("has a malformed parameter");
      r.skipWhitespace();
      if (!r.done && r.peek() !== ",") throw new ChallengeSyntaxError("has a malformed parameter");
      continue;
    }
    for (;;) {
      const name = r.token().toLowerCase();
      r.skipWhitespace();
      r.i++; // "="
      r.skipWhitespace();
      let v: string;
      if (r.peek() === '"') v = r.quoted();
      else {
        v = r.token();
        if (v === "") throw new ChallengeSyntaxError(`has no value for ${name}`);
      }
      if (challenge.params.has(name)) throw new ChallengeSyntaxError(`repeats the parameter ${name}`);
      challenge.params.set(name, v);
      r.skipWhitespace();
      if (r.done) break;
      if (r.peek() !== ",") throw new ChallengeSyntaxError("has text after a parameter value");
      // Next: another parameter of this challenge, or the next challenge.
      const save = r.i;
      while (r.peek() === "," || r.peek() === " " || r.peek() === "\t") r.i++;
      if (r.done || !atParam(r)) {
        r.i = save;
        break;
      }
    }
  }
  return challenges;
}

/**
 * The Bearer challenge of a `WWW-Authenticate` value (several challenges
 * may share one value; exactly one must be Bearer). Throws
 * ChallengeSyntaxError for anything that does not parse strictly.
 */
export function parseBearerChallenge(value: string): BearerChallenge {
  if (value.length > MAX_CHALLENGE_CHARS) throw new ChallengeSyntaxError(`is longer than ${MAX_CHALLENGE_CHARS} characters`);
  if (!/^[\t\x20-\x7E]*$/.test(value)) throw new ChallengeSyntaxError("has a character outside visible ASCII");
  const bearer = parseChallenges(value).filter((c) => c.scheme === "bearer");
  if (bearer.length === 0) throw new ChallengeSyntaxError("has no Bearer challenge");
  if (bearer.length > 1) throw new ChallengeSyntaxError("has more than one Bearer challenge");
  const params = bearer[0]!.params;
  const error = params.get("error");
  if (error !== undefined && !ERROR_VALUE.test(error)) throw new ChallengeSyntaxError("has an error code with characters RFC 6750 does not allow");
  const scope = params.get("scope");
  const scopes = scope === undefined ? [] : scope.split(" ").filter((s) => s !== "");
  if (scopes.length > MAX_CHALLENGE_SCOPES) throw new ChallengeSyntaxError(`names more than ${MAX_CHALLENGE_SCOPES} scopes`);
  for (const s of scopes) if (!SCOPE_TOKEN.test(s) || s.length > 256) throw new ChallengeSyntaxError("names a scope that is not a scope token");
  const resourceMetadata = params.get("resource_metadata");
  if (resourceMetadata !== undefined && !/^https?:\/\/\S+$/i.test(resourceMetadata)) {
    throw new ChallengeSyntaxError("has a resource_metadata that is not an http(s) URL");
  }
  return { error, scopes: [...new Set(scopes)], resourceMetadata };
}

/** parseBearerChallenge, or undefined for a value that is absent or does not parse. */
export function tryParseBearerChallenge(value: string | null | undefined): BearerChallenge | undefined {
  if (!value) return undefined;
  try {
    return parseBearerChallenge(value);
  } catch (err) {
    if (err instanceof ChallengeSyntaxError) return undefined;
    throw err;
  }
}
