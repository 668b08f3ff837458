import type { Socket } from "node:net";
import type { TLSSocket } from "node:tls";
import type { DescMessage, DescService } from "@bufbuild/protobuf";
import {
  ConnectError,
  createContextKey,
  createContextValues,
  type ContextValues,
  type HandlerContext,
  type ServiceImpl,
} from "@connectrpc/connect";
import type { RpcChain, RpcFailure } from "./chain.js";
import { certificateNames } from "./context.js";
import { errorInfoOf, type RpcStatus } from "./errors.js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import type { ServiceHandlers, StreamHandler, UnaryHandler } from "./handlers.js";
import { MessageQueue } from "./message-queue.js";

/** The connection a Connect or gRPC-Web request arrived on. */
const kSocket = createContextKey<Socket | undefined>(undefined, { description: "connection" });

/** connect-node's per-request values: the request's socket, read by the handler only when needed. */
export function contextValuesFor(req: { socket: Socket }): ContextValues {
  return createContextValues().set(kSocket, req.socket);
}

/** A status as a ConnectError: code, safe message, ErrorInfo in the details. */
export function connectErrorOf(status: RpcStatus): ConnectError {
  const info = errorInfoOf(status);
  return new ConnectError(status.message, status.code, undefined, info ? [{ desc: ErrorInfoSchema, value: info }] : []);
}

function peerOf(socket: Socket | undefined): string {
  return socket?.remoteAddress ? `${socket.remoteAddress}:${socket.remotePort ?? 0}` : "unknown";
}

function verifiedNames(socket: Socket | undefined): string[] {
  const tls = socket as TLSSocket | undefined;
  if (!tls?.encrypted || !tls.authorized) return [];
  return certificateNames(tls.getPeerCertificate());
}

/**
 * A connect-node implementation of a service whose every call goes through
 * the RPC chain to the shared handler; a failure becomes a ConnectError from
 * its mapped status (never from the original error's message).
 */
export function connectService<S extends DescService>(service: S, handlers: ServiceHandlers<S>, chain: RpcChain): ServiceImpl<S> {
  const impl: Record<string, unknown> = {};
  for (const method of service.methods) {
    const handler = handlers[method.localName as keyof ServiceHandlers<S>] as unknown;
    const incoming = (ctx: HandlerContext) => incomingConnectCall(service.typeName, method.name, ctx);
    if (method.methodKind === "server_streaming") {
      const stream = handler as StreamHandler<DescMessage, DescMessage>;
      // connect-node pulls each message from this generator when it can write it (backpressure).
      impl[method.localName] = async function* (request: never, ctx: HandlerContext) {
        const queue = new MessageQueue<unknown>();
        chain.run(incoming(ctx), (callCtx) => stream(request, callCtx, (m) => queue.push(m))).then(
          () => queue.end(),
          (failure: RpcFailure) => queue.fail(connectErrorOf(failure.status)),
        );
        try {
          yield* queue;
        } finally {
          queue.close();
        }
      };
      continue;
    }
    const unary = handler as UnaryHandler<DescMessage, DescMessage>;
    impl[method.localName] = (request: never, ctx: HandlerContext) =>
      chain.run(incoming(ctx), (callCtx) => unary(request, callCtx)).catch((failure: RpcFailure) => {
        throw connectErrorOf(failure.status);
      });
  }
  return impl as ServiceImpl<S>;
}

/** The chain's view of a connect-node call. */
function incomingConnectCall(serviceName: string, methodName: string, ctx: HandlerContext) {
  const socket = ctx.values.get(kSocket);
  const timeout = ctx.timeoutMs();
  return {
    service: serviceName,
    method: methodName,
    protocol: ctx.protocolName.replace("-", "_"),
    peer: peerOf(socket),
    authorization: () => ctx.requestHeader.get("authorization") ?? undefined,
    peerNames: () => verifiedNames(socket),
    header: (name: string) => ctx.requestHeader.get(name) ?? undefined,
    deadline: timeout === undefined ? undefined : Date.now() + timeout,
    // connect-node aborts the signal on the deadline, on a disconnect, and after the answer is written
    // (which the chain ignores: the call has settled by then).
    isCancelled: () => ctx.signal.aborted,
    onCancel: (listener: () => void) => {
      // connect-node starts the deadline before the body is read: the signal may be aborted already.
      if (ctx.signal.aborted) listener();
      else ctx.signal.addEventListener("abort", listener, { once: true });
    },
  };
}
