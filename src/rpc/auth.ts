import { createHash, timingSafeEqual } from "node:crypto";
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { CallerConfig, RpcName } from "../config.js";
import type { Logger } from "../logger.js";
import { PermissionDeniedError } from "../sessions/errors.js";
import { kCaller, kCallerScope, kPeer, kPeerNames } from "./context.js";
import { ERROR_DOMAIN } from "./errors.js";
import { TokenBucket } from "./rate-limit.js";

const TOKEN_SERVICE = "tokenservice.v1.TokenService";
/** Probes must work without credentials. */
const OPEN_SERVICES = new Set(["grpc.health.v1.Health"]);

function denied(code: Code, message: string, reason: string): ConnectError {
  return new ConnectError(message, code, undefined, [
    { desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN }) },
  ]);
}

/** Finds the caller for a request's credentials: a bearer secret, else a verified client certificate. */
export class CallerDirectory {
  private readonly byToken: Array<{ digest: Buffer; caller: CallerConfig }>;
  private readonly bySubject: Map<string, CallerConfig>;

  constructor(readonly callers: CallerConfig[]) {
    this.byToken = callers.flatMap((c) => (c.tokenSha256 ? [{ digest: c.tokenSha256, caller: c }] : []));
    this.bySubject = new Map(callers.flatMap((c) => (c.mtlsSubject ? [[c.mtlsSubject.toLowerCase(), c] as const] : [])));
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

/**
 * Authentication, authorization and rate limiting for every RPC. With no
 * callers configured (loopback only) everyone is "anonymous" with full rights.
 * Each denial is an audit line naming the caller (never the credential).
 */
export function createAuthInterceptor(directory: CallerDirectory, logger: Logger): Interceptor {
  const buckets = new Map<string, TokenBucket>();
  for (const c of directory.callers) if (c.rateLimit) buckets.set(c.name, new TokenBucket(c.rateLimit.perSecond, c.rateLimit.burst));

  return (next) => async (req) => {
    const service = req.service.typeName;
    const rpc = req.method.name;
    const audit = (caller: string | null, reason: string) =>
      logger.warn({ audit: true, event: "denied", caller, rpc: `${service}/${rpc}`, reason, peer: req.contextValues.get(kPeer) }, "call denied");

    if (directory.enabled && !OPEN_SERVICES.has(service)) {
      const who = directory.identify(req.header.get("authorization"), req.contextValues.get(kPeerNames));
      if (who === "none" || who === "bad") {
        audit(null, who === "none" ? "no_credential" : "unknown_credential");
        throw denied(Code.Unauthenticated, "a valid caller credential is required", "UNAUTHENTICATED");
      }
      req.contextValues.set(kCaller, who.name);
      req.contextValues.set(kCallerScope, { providers: who.providers });
      if (service === TOKEN_SERVICE && who.rpcs && !who.rpcs.has(rpc as RpcName)) {
        audit(who.name, "rpc_not_allowed");
        throw denied(Code.PermissionDenied, `caller ${who.name} may not call ${rpc}`, "RPC_NOT_ALLOWED");
      }
      const bucket = buckets.get(who.name);
      if (bucket && !bucket.take()) {
        audit(who.name, "rate_limited");
        throw denied(Code.ResourceExhausted, `caller ${who.name} is over its rate limit`, "RATE_LIMITED");
      }
    }
    try {
      return await next(req);
    } catch (err) {
      if (err instanceof PermissionDeniedError) audit(req.contextValues.get(kCaller), err.reason);
      throw err;
    }
  };
}
