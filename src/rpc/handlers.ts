import type { DescMessage, DescMethodUnary, DescService, MessageShape } from "@bufbuild/protobuf";
import type { CallContext } from "../sessions/scope.js";

/** One implementation of a unary RPC, the same for both listeners: message in, message out. */
export type UnaryHandler<I extends DescMessage, O extends DescMessage> = (
  request: MessageShape<I>,
  ctx: CallContext,
) => Promise<MessageShape<O>>;

/**
 * Handlers for every method of a generated service, keyed by the method's
 * local name (`getToken`). Typed from the descriptor, so a missing RPC fails
 * to compile. Our own services are unary; streaming methods come from the
 * grpc-node libraries (health Watch, reflection).
 */
export type ServiceHandlers<S extends DescService> = {
  [K in keyof S["method"]]: S["method"][K] extends DescMethodUnary<infer I, infer O> ? UnaryHandler<I, O> : never;
};
