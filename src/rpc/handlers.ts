import type { DescMessage, DescMethodServerStreaming, DescMethodUnary, DescService, MessageShape } from "@bufbuild/protobuf";
import type { CallContext } from "../sessions/scope.js";

/**
 * One implementation of a unary RPC, the same for both listeners: message in,
 * message out. It may answer with the message itself when it has it at hand
 * (GetToken from the cache), which spares the gRPC listener every promise.
 */
export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => MessageShape<O> | Promise<MessageShape<O>>;

/**
 * One implementation of a server-streaming RPC, the same for both listeners:
 * `send` resolves when the listener has taken the message (backpressure) and
 * rejects once the caller has gone away; the stream ends when the returned
 * promise settles (OK when it resolves, its mapped status when it rejects).
 */
export type StreamHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
  send: (message: MessageShape<O>) => Promise<void>,
) => Promise<void>;

/**
 * Handlers for every method of a generated service, keyed by the method's
 * local name (`getToken`). Typed from the descriptor, so a missing RPC fails
 * to compile. Our own services are unary, except EventService/WatchEvents
 * (server streaming); other streaming methods come from the grpc-node
 * libraries (health Watch, reflection).
 */
export type ServiceHandlers<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends DescMethodUnary<infer I, infer O>
    ? UnaryHandler<I, O>
    : S["method"][K] extends DescMethodServerStreaming<infer I, infer O>
      ? StreamHandler<I, O>
      : never;
};
