import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { DatabaseUnavailableError } from "../db/session-repository.js";
import {
  CallerDeadlineError,
  CorruptSessionError,
  InvalidArgumentError,
  KeyUnavailableError,
  NoIdTokenError,
  PermissionDeniedError,
  ProviderUnavailableError,
  ReauthRequiredError,
  RefreshTimeoutError,
  SessionNotFoundError,
} from "../sessions/errors.js";

/** ErrorInfo domain of every error this service reports. */
export const ERROR_DOMAIN = "tokenservice.v1";

function withInfo(message: string, code: Code, reason: string, metadata: Record<string, string> = {}, cause?: unknown) {
  return new ConnectError(
    message,
    code,
    undefined,
    [{ desc: ErrorInfoSchema, value: create(ErrorInfoSchema, { reason, domain: ERROR_DOMAIN, metadata }) }],
    cause,
  );
}

/**
 * The one place that turns errors into gRPC status. Domain errors get their
 * code, a safe message and a google.rpc.ErrorInfo; anything unknown becomes
 * INTERNAL with a generic message (its own message may hold a secret, so it
 * is never copied: the log keeps the cause). `known` is false for the latter.
 */
export function toConnectError(err: unknown): { error: ConnectError; known: boolean } {
  if (err instanceof ConnectError) return { error: err, known: true };
  if (err instanceof InvalidArgumentError) {
    return { error: withInfo(err.message, Code.InvalidArgument, "INVALID_ARGUMENT", { field: err.field }), known: true };
  }
  if (err instanceof SessionNotFoundError) {
    return { error: withInfo(err.message, Code.NotFound, "SESSION_NOT_FOUND"), known: true };
  }
  if (err instanceof ReauthRequiredError) {
    return {
      error: withInfo(err.message, Code.FailedPrecondition, "REAUTH_REQUIRED", {
        provider: err.provider,
        provider_error: err.reason,
      }),
      known: true,
    };
  }
  if (err instanceof PermissionDeniedError) {
    return {
      error: withInfo(err.message, Code.PermissionDenied, "PROVIDER_NOT_ALLOWED", { provider: err.provider }),
      known: true,
    };
  }
  if (err instanceof NoIdTokenError) {
    return { error: withInfo(err.message, Code.FailedPrecondition, "NO_ID_TOKEN"), known: true };
  }
  if (err instanceof ProviderUnavailableError) {
    return {
      error: withInfo(err.message, Code.Unavailable, "PROVIDER_UNAVAILABLE", { provider: err.provider, cause: err.reason }),
      known: true,
    };
  }
  if (err instanceof RefreshTimeoutError) {
    return { error: withInfo(err.message, Code.Unavailable, "REFRESH_TIMEOUT"), known: true };
  }
  if (err instanceof CallerDeadlineError) {
    return { error: withInfo(err.message, Code.DeadlineExceeded, "DEADLINE_EXCEEDED"), known: true };
  }
  if (err instanceof DatabaseUnavailableError) {
    return { error: withInfo("database unavailable; try again", Code.Unavailable, "DATABASE_UNAVAILABLE"), known: true };
  }
  if (err instanceof KeyUnavailableError) {
    return {
      error: withInfo(err.message, Code.FailedPrecondition, "KEY_UNAVAILABLE", { key_id: err.keyId }),
      known: true,
    };
  }
  if (err instanceof CorruptSessionError) {
    return { error: withInfo(err.message, Code.DataLoss, "CORRUPT_SESSION"), known: true };
  }
  return { error: new ConnectError("internal error", Code.Internal), known: false };
}
