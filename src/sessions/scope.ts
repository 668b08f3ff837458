import type { TraceContext } from "../tracing/spans.js";
import { PermissionDeniedError, ResourceNotAllowedError } from "./errors.js";

/** Who is asking and until when; passed down from the RPC layer. */
export interface CallContext {
  /** Caller name for audit lines ("anonymous" without caller authentication). */
  caller?: string;
  /** Providers the caller may act on; undefined: all. */
  providers?: ReadonlySet<string>;
  /** Audiences (RFC 8707 resources) the caller may ask tokens for; undefined: all. */
  resources?: ReadonlySet<string>;
  /** Aborts when the caller goes away (for work that takes a signal; a wait uses onAbort). */
  signal?: AbortSignal;
  /**
   * Calls `listener` once when the caller goes away (at once if it has);
   * returns what takes the listener off again. Cheaper than `signal` for a
   * call that only waits: Node 20 makes every AbortSignal transferable, about
   * 10 µs each, and a refresh storm has one waiting caller per call.
   */
  onAbort?(listener: () => void): () => void;
  /** Epoch ms of the caller's deadline, if it set one. */
  deadline?: number;
  /** Identifiers (never secrets) the handler adds to the call's log line, such as the resource asked for. */
  logFields?: Record<string, string>;
  /** The call's trace, when it is traced: spans of the work it sets off go under it. */
  trace?: TraceContext;
  /** The caller's user binding; undefined for `user_binding: none`. */
  userBinding?: UserBinding;
}

/**
 * How a call names its user: through a session id, by user (and provider) to
 * find a session, for all of a user's sessions, or for a session it creates.
 */
export type UserNaming = "session" | "lookup" | "all_sessions" | "new";

/** A caller's user binding (`user_binding` other than `none`), checked for every call that names a user. */
export interface UserBinding {
  /** Resolves when the call may act for `userId`; rejects with UserNotBoundError otherwise. */
  check(userId: string, naming: UserNaming): Promise<void>;
}

/** Throws PermissionDeniedError when the caller may not act on `provider`. */
export function requireProviderAllowed(ctx: CallContext, provider: string): void {
  if (ctx.providers && !ctx.providers.has(provider)) throw new PermissionDeniedError(provider);
}

/**
 * The providers a user-wide operation covers: the one asked for (which the
 * caller must be allowed), else every provider the caller may act on
 * (undefined: all).
 */
export function providersInScope(ctx: CallContext, provider: string): string[] | undefined {
  if (provider !== "") {
    requireProviderAllowed(ctx, provider);
    return [provider];
  }
  return ctx.providers ? [...ctx.providers] : undefined;
}

/** Throws ResourceNotAllowedError when the caller may not ask for tokens for `resource`. */
export function requireResourceAllowed(ctx: CallContext, resource: string): void {
  if (ctx.resources && !ctx.resources.has(resource)) throw new ResourceNotAllowedError(resource);
}
