import { create } from "@bufbuild/protobuf";
import { Code } from "@connectrpc/connect";
import { ErrorInfoSchema, type ErrorInfo } from "../../gen/google/rpc/error_details_pb.js";
import {
  AuthorizationDeniedError,
  CodeRejectedError,
  InvalidCallbackError,
  InvalidStateError,
  ProviderExistsError,
  ProviderHasSessionsError,
  ProviderInUseError,
  ProviderNotFoundError,
  ProviderReadOnlyError,
  ProviderSetupError,
  RegistrationRefusedError,
  StepUpLimitError,
} from "../authorization/errors.js";
import { DestinationNotAllowedError, findRefusal } from "../providers/outbound-policy.js";
import {
  CallerDeadlineError,
  CorruptSessionError,
  ExchangeRefusedError,
  InvalidArgumentError,
  KeyUnavailableError,
  NoIdTokenError,
  PermissionDeniedError,
  UserAssertionUnavailableError,
  UserNotBoundError,
  ProviderUnavailableError,
  ReauthRequiredError,
  RefreshTimeoutError,
  ResourceNotAllowedError,
  ResourceNotGrantedError,
  SessionNotFoundError,
  StoreUnavailableError,
} from "../sessions/errors.js";
import { CursorOutOfRangeError, TooManyWatchersError, WatchClosingError } from "../events/errors.js";
import { AssertionRejectedError, IdJagNotSupportedError, IdJagRefusedError, NoIdpSessionError } from "../sessions/id-jag-errors.js";

export { Code } from "@connectrpc/connect";

/** ErrorInfo domain of every error this service reports. */
export const ERROR_DOMAIN = "tokenservice.v1";

/**
 * How a call ended, in terms both listeners share: a canonical gRPC code (the
 * same numbers on every protocol), a message that is safe to show the caller,
 * and the google.rpc.ErrorInfo reason and metadata, when there is one.
 */
export interface RpcStatus {
  code: Code;
  message: string;
  reason?: string;
  metadata?: Record<string, string>;
  /** False for an unexpected error (a bug): the caller sees INTERNAL, the log keeps the cause. */
  known: boolean;
}

/** A call refused by the RPC layer itself (authentication, scopes, rate limit, malformed request). */
export class CallRefusedError extends Error {
  override name = "CallRefusedError";
  constructor(
    readonly status: Code,
    readonly reason: string | undefined,
    message: string,
  ) {
    super(message);
  }
}

/** The caller went away (cancelled, or its deadline passed) before the call ended. */
export class CallCancelledError extends Error {
  override name = "CallCancelledError";
  constructor(readonly status: Code.Canceled | Code.DeadlineExceeded) {
    super(status === Code.Canceled ? "the call was cancelled" : "the caller's deadline passed");
  }
}

/** The server cut a call off at the end of the shutdown grace period. */
export class ShuttingDownError extends Error {
  override name = "ShuttingDownError";
  constructor() {
    super("server is shutting down; try again");
  }
}

/**
 * A status produced by a library handler on the gRPC port (health, reflection),
 * passed on as it is: those messages never hold a secret.
 */
export class LibraryStatusError extends Error {
  override name = "LibraryStatusError";
  constructor(
    readonly status: Code,
    message: string,
  ) {
    super(message);
  }
}

function info(code: Code, message: string, reason: string, metadata?: Record<string, string>): RpcStatus {
  return { code, message, reason, metadata, known: true };
}

/**
 * The one place that turns errors into gRPC status, for both listeners.
 * Domain errors get their code, a safe message and an ErrorInfo reason;
 * anything unknown becomes INTERNAL with a generic message (its own message
 * may hold a secret, so it is never copied: the log keeps the cause).
 */
export function toRpcStatus(err: unknown): RpcStatus {
  if (err instanceof InvalidArgumentError) return info(Code.InvalidArgument, err.message, "INVALID_ARGUMENT", { field: err.field });
  if (err instanceof SessionNotFoundError) return info(Code.NotFound, err.message, "SESSION_NOT_FOUND");
  if (err instanceof ReauthRequiredError) {
    return info(Code.FailedPrecondition, err.message, "REAUTH_REQUIRED", { provider: err.provider, provider_error: err.reason });
  }
  if (err instanceof PermissionDeniedError) {
    return info(Code.PermissionDenied, err.message, "PROVIDER_NOT_ALLOWED", { provider: err.provider });
  }
  if (err instanceof NoIdTokenError) return info(Code.FailedPrecondition, err.message, "NO_ID_TOKEN");
  if (err instanceof DestinationNotAllowedError) {
    return info(Code.InvalidArgument, err.message, "DESTINATION_NOT_ALLOWED", { host: err.host, rule: err.rule });
  }
  if (err instanceof ProviderUnavailableError) {
    // A provider whose endpoints the outbound policy now refuses (a reload, or a name that resolves elsewhere): not the caller's fault, not transient.
    const refusal = findRefusal(err.cause);
    if (refusal) {
      return info(Code.FailedPrecondition, refusal.message, "DESTINATION_NOT_ALLOWED", { provider: err.provider, host: refusal.host, rule: refusal.rule });
    }
    return info(Code.Unavailable, err.message, "PROVIDER_UNAVAILABLE", { provider: err.provider, cause: err.reason });
  }
  if (err instanceof RefreshTimeoutError) return info(Code.Unavailable, err.message, "REFRESH_TIMEOUT");
  if (err instanceof CallerDeadlineError) return info(Code.DeadlineExceeded, err.message, "DEADLINE_EXCEEDED");
  if (err instanceof StoreUnavailableError) return info(Code.Unavailable, err.message, "DATABASE_UNAVAILABLE");
  if (err instanceof KeyUnavailableError) {
    return info(Code.FailedPrecondition, err.message, "KEY_UNAVAILABLE", { key_id: err.keyId });
  }
  if (err instanceof CorruptSessionError) return info(Code.DataLoss, err.message, "CORRUPT_SESSION");
  if (err instanceof ResourceNotGrantedError) return info(Code.FailedPrecondition, err.message, "RESOURCE_NOT_GRANTED", { resource: err.resource });
  if (err instanceof ResourceNotAllowedError) return info(Code.PermissionDenied, err.message, "RESOURCE_NOT_ALLOWED", { resource: err.resource });
  if (err instanceof UserNotBoundError) return info(Code.PermissionDenied, err.message, "USER_NOT_BOUND");
  if (err instanceof UserAssertionUnavailableError) return info(Code.Unavailable, err.message, "USER_ASSERTION_UNAVAILABLE");
  if (err instanceof ExchangeRefusedError) {
    return info(Code.FailedPrecondition, err.message, "EXCHANGE_REFUSED", { provider: err.provider, provider_error: err.providerError });
  }
  if (err instanceof IdJagRefusedError) return info(Code.FailedPrecondition, err.message, "IDJAG_REFUSED", { provider: err.provider, provider_error: err.providerError });
  if (err instanceof AssertionRejectedError) {
    return info(Code.FailedPrecondition, err.message, "ASSERTION_REJECTED", { provider: err.provider, provider_error: err.providerError });
  }
  if (err instanceof IdJagNotSupportedError) return info(Code.FailedPrecondition, err.message, "ID_JAG_NOT_SUPPORTED", { provider: err.provider });
  if (err instanceof NoIdpSessionError) return info(Code.FailedPrecondition, err.message, "NO_IDP_SESSION", { provider: err.provider, enterprise_idp: err.enterpriseIdp });
  if (err instanceof AuthorizationDeniedError) return info(Code.FailedPrecondition, err.message, "AUTHORIZATION_DENIED", { error: err.error });
  if (err instanceof InvalidStateError) return info(Code.FailedPrecondition, err.message, "INVALID_STATE");
  if (err instanceof CodeRejectedError) return info(Code.FailedPrecondition, err.message, "CODE_REJECTED", { error: err.error });
  if (err instanceof InvalidCallbackError) return info(Code.FailedPrecondition, err.message, "INVALID_CALLBACK", { check: err.check });
  if (err instanceof ProviderExistsError) return info(Code.AlreadyExists, err.message, "PROVIDER_EXISTS", { provider: err.provider });
  if (err instanceof ProviderNotFoundError) return info(Code.NotFound, err.message, "PROVIDER_NOT_FOUND", { provider: err.provider });
  if (err instanceof ProviderReadOnlyError) return info(Code.FailedPrecondition, err.message, "PROVIDER_READ_ONLY", { provider: err.provider });
  if (err instanceof ProviderHasSessionsError) {
    return info(Code.FailedPrecondition, err.message, "PROVIDER_HAS_SESSIONS", { provider: err.provider, sessions: String(err.sessions) });
  }
  if (err instanceof ProviderInUseError) {
    return info(Code.FailedPrecondition, err.message, "PROVIDER_IN_USE", { provider: err.provider, dependents: err.dependents.join(",") });
  }
  if (err instanceof RegistrationRefusedError) return info(Code.FailedPrecondition, err.message, err.reason);
  if (err instanceof ProviderSetupError) return info(Code.FailedPrecondition, err.message, "PROVIDER_SETUP_FAILED", { reason: err.reason });
  if (err instanceof StepUpLimitError) return info(Code.FailedPrecondition, err.message, "STEP_UP_LIMIT", { max_per_hour: String(err.max) });
  if (err instanceof CallRefusedError) {
    return err.reason === undefined
      ? { code: err.status, message: err.message, known: true }
      : info(err.status, err.message, err.reason);
  }
  if (err instanceof ShuttingDownError || err instanceof WatchClosingError) return info(Code.Unavailable, err.message, "SHUTTING_DOWN");
  if (err instanceof CursorOutOfRangeError) return info(Code.OutOfRange, err.message, err.reason, { bound: String(err.bound) });
  if (err instanceof TooManyWatchersError) return info(Code.ResourceExhausted, err.message, "TOO_MANY_WATCHERS", { max: String(err.max) });
  if (err instanceof CallCancelledError || err instanceof LibraryStatusError) {
    return { code: err.status, message: err.message, known: true };
  }
  return { code: Code.Internal, message: "internal error", known: false };
}

/** Lower-case gRPC code name, as logs and metrics name it ("ok", "not_found", …). */
export function codeName(code: Code | undefined): string {
  if (code === undefined) return "ok";
  // A code outside the canonical 1-16 (a library's bug) is "unknown", never a crash in the log line.
  if (Code[code] === undefined) return "unknown";
  return Code[code].replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}

/** The google.rpc.ErrorInfo a status carries, if it has a reason. */
export function errorInfoOf(status: RpcStatus): ErrorInfo | undefined {
  if (status.reason === undefined) return undefined;
  return create(ErrorInfoSchema, { reason: status.reason, domain: ERROR_DOMAIN, metadata: status.metadata ?? {} });
}
