import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";
import { errSummary, type Logger } from "../logger.js";
import { kCaller, kPeer } from "./context.js";
import { toConnectError } from "./errors.js";

/** Lower-case gRPC code name, as grpc-status names it in logs ("ok", "not_found", …). */
export function codeName(code: Code | undefined): string {
  if (code === undefined) return "ok";
  return Code[code].replace(/[A-Z]/g, (c, i: number) => (i === 0 ? c.toLowerCase() : `_${c.toLowerCase()}`));
}

/** Called once per finished RPC, for metrics. */
export type RpcObserver = (event: { method: string; code: string; ms: number }) => void;

/**
 * Outermost interceptor: maps every error through `toConnectError` (the only
 * place errors become gRPC codes) and writes one log line per RPC with the
 * method, code, duration and peer address. Never logs a message body.
 */
export function createLoggingInterceptor(logger: Logger, observe?: RpcObserver): Interceptor {
  return (next) => async (req) => {
    const started = performance.now();
    const method = `${req.service.typeName}/${req.method.name}`;
    const line = () => ({
      rpc: method,
      ms: Math.round((performance.now() - started) * 100) / 100,
      peer: req.contextValues.get(kPeer),
      caller: req.contextValues.get(kCaller),
    });
    // Probes and reflection are frequent and dull: debug level. Token service calls: info.
    const level = req.service.typeName.startsWith("tokenservice.") ? "info" : "debug";
    try {
      const res = await next(req);
      const fields = { ...line(), code: "ok" };
      logger[level](fields, "rpc");
      observe?.({ method, code: "ok", ms: fields.ms });
      return res;
    } catch (err) {
      const { error, known } = toConnectError(err);
      const fields = { ...line(), code: codeName(error.code) };
      if (known) {
        // The domain's machine code (REAUTH_REQUIRED, NOT_FOUND, …), as the ErrorInfo reason says it.
        const reason = err instanceof ConnectError ? undefined : (err as { code?: unknown }).code;
        logger[level]({ ...fields, reason: typeof reason === "string" ? reason : undefined }, "rpc");
      } else {
        // Unknown errors: keep the type and code for operators, never the message text.
        logger.error({ ...fields, err: errSummary(err), stack: stackOnly(err) }, "rpc failed with an unexpected error");
      }
      observe?.({ method, code: fields.code, ms: fields.ms });
      throw error;
    }
  };
}

/** The stack frames of an error, without its first line (which repeats the message). */
function stackOnly(err: unknown): string | undefined {
  if (!(err instanceof Error) || !err.stack) return undefined;
  return err.stack.split("\n").slice(1, 8).join("\n");
}
