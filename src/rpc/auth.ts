import { createHash, timingSafeEqual } from "node:crypto";
import type { CallerConfig, UserAssertionConfig } from "../config.js";
import type { UserBinding } from "../sessions/scope.js";
import { assertionBinding, SESSION_ID_BINDING, UserAssertionVerifier } from "./user-binding.js";

/** Finds the caller for a request's credentials: a bearer secret, else a verified client certificate. */
export class CallerDirectory {
  private readonly byToken: Array<{ digest: Buffer; caller: CallerConfig }>;
  private readonly bySubject: Map<string, CallerConfig>;

  private readonly verifier: UserAssertionVerifier | undefined;

  constructor(
    readonly callers: CallerConfig[],
    userAssertion?: UserAssertionConfig,
  ) {
    this.verifier = userAssertion ? new UserAssertionVerifier(userAssertion) : undefined;
    this.byToken = callers.flatMap((c) => (c.tokenSha256 ? [{ digest: c.tokenSha256, caller: c }] : []));
    this.bySubject = new Map(callers.flatMap((c) => (c.mtlsSubject ? [[c.mtlsSubject.toLowerCase(), c] as const] : [])));
  }

  /** The caller's user binding for one call (with its user assertion header, for `assertion`); undefined for `none`. */
  bindingFor(caller: CallerConfig, assertion: string | undefined): UserBinding | undefined {
    if (caller.userBinding === "none") return undefined;
    if (caller.userBinding === "session_id") return SESSION_ID_BINDING;
    // Configuration checks that assertion-bound callers come with user_assertion.
    return assertionBinding(this.verifier!, assertion);
  }

  get enabled(): boolean {
    return this.callers.length > 0;
  }

  /**
   * "none" when no credential was presented, "bad" when one was and matched
   * no caller. Every configured digest is compared, in constant time, so the
   * time taken does not tell which (or whether one) matched.
   */
  identify(authorization: string | null, peerNames: readonly string[]): CallerConfig | "none" | "bad" {
    if (authorization !== null) {
      const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(authorization);
      if (!m) return "bad";
      const digest = createHash("sha256").update(m[1]!, "utf8").digest();
      let found: CallerConfig | undefined;
      for (const entry of this.byToken) {
        if (timingSafeEqual(digest, entry.digest)) found = entry.caller;
      }
      return found ?? "bad";
    }
    for (const name of peerNames) {
      const caller = this.bySubject.get(name.toLowerCase());
      if (caller) return caller;
    }
    return "none";
  }
}
