import { create, fromBinary, toBinary, type DescMessage, type DescService } from "@bufbuild/protobuf";
import { anyPack } from "@bufbuild/protobuf/wkt";
import * as grpc from "@grpc/grpc-js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import type { CallDone, IncomingCall, RpcChain } from "./chain.js";
import { RpcFailure } from "./chain.js";
import { certificateNames, deadlineMs } from "./context.js";
import { decodeGetTokenRequest, encodeGetTokenResponse } from "./get-token-codec.js";
import { errorInfoOf, type RpcStatus } from "./errors.js";
import type { ServiceHandlers, StreamHandler, UnaryHandler } from "./handlers.js";

/**
 * A request whose bytes are not a valid message of its type. grpc-js would
 * answer a throwing deserializer with INTERNAL; the handler answers this
 * marker with INVALID_ARGUMENT instead (after authentication, like any call).
 */
class MalformedRequest {
  constructor(readonly typeName: string) {}
}

function asBuffer(bytes: Uint8Array): Buffer {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/**
 * A frozen message is one a handler hands out again unchanged (GetToken's
 * answer per cached session version): its bytes are encoded once and kept
 * beside it. grpc-js copies them into each frame it writes.
 */
function serializer(schema: DescMessage) {
  const encoded = new WeakMap<object, Buffer>();
  const encode = (DIRECT_ENCODERS[schema.typeName] ?? ((m: Parameters<typeof toBinary>[1]) => asBuffer(toBinary(schema, m)))) as (m: unknown, kept: boolean) => Buffer;
  return (message: unknown) => {
    if (!Object.isFrozen(message)) return encode(message, false);
    let bytes = encoded.get(message as object);
    if (!bytes) encoded.set(message as object, (bytes = encode(message, true)));
    return bytes;
  };
}

/**
 * Messages read and written without protobuf-es's reflection on the gRPC listener (see get-token-codec.ts).
 * An encoder is told when its bytes are `kept` (beside a frozen message), to give them memory of their own.
 */
const DIRECT_ENCODERS: Record<string, (m: never, kept: boolean) => Buffer> = { "tokenservice.v1.GetTokenResponse": encodeGetTokenResponse };
const DIRECT_DECODERS: Record<string, (bytes: Buffer) => unknown> = { "tokenservice.v1.GetTokenRequest": decodeGetTokenRequest };

function deserializer(schema: DescMessage) {
  const decode = DIRECT_DECODERS[schema.typeName] ?? ((bytes: Buffer) => fromBinary(schema, bytes));
  return (bytes: Buffer) => {
    try {
      return decode(bytes);
    } catch {
      return new MalformedRequest(schema.typeName);
    }
  };
}

/**
 * The grpc-js service definition of a generated service: the protobuf-es
 * messages of gen/, with `toBinary` and `fromBinary` as the serializers.
 */
export function grpcServiceDefinition(service: DescService): grpc.ServiceDefinition {
  const definition: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const method of service.methods) {
    definition[method.localName] = {
      path: `/${service.typeName}/${method.name}`,
      originalName: method.name,
      requestStream: method.methodKind === "client_streaming" || method.methodKind === "bidi_streaming",
      responseStream: method.methodKind === "server_streaming" || method.methodKind === "bidi_streaming",
      requestSerialize: serializer(method.input),
      requestDeserialize: deserializer(method.input),
      responseSerialize: serializer(method.output),
      responseDeserialize: deserializer(method.output),
    };
  }
  return definition;
}

/**
 * A status for grpc-js: the code, the message, and google.rpc.Status (with
 * its ErrorInfo) in the standard `grpc-status-details-bin` trailer.
 */
export function grpcStatusOf(status: RpcStatus): Partial<grpc.StatusObject> {
  const metadata = new grpc.Metadata();
  const info = errorInfoOf(status);
  if (info) {
    const details = create(StatusSchema, { code: status.code, message: status.message, details: [anyPack(ErrorInfoSchema, info)] });
    metadata.set("grpc-status-details-bin", asBuffer(toBinary(StatusSchema, details)));
  }
  return { code: status.code as number as grpc.status, details: status.message, metadata };
}

/** How the chain's answer to a unary call reaches grpc-js: the response, or the failure's status. */
export function unaryDone(callback: grpc.sendUnaryData<unknown>): CallDone<unknown> {
  return (failure, response) => (failure ? callback(grpcStatusOf(failure.status)) : callback(null, response));
}

/** Something a grpc-js server call offers, for the chain. */
type GrpcCall = Pick<grpc.ServerUnaryCall<unknown, unknown>, "getPeer" | "getDeadline" | "getAuthContext" | "metadata" | "cancelled"> &
  Pick<NodeJS.EventEmitter, "once">;

/**
 * The chain's view of a grpc-js call: one object a call, its methods on the
 * prototype (made for every call, so no closures of its own).
 */
class GrpcIncomingCall implements IncomingCall {
  readonly protocol = "grpc";
  readonly peer: string;
  readonly deadline: number | undefined;

  constructor(
    private readonly call: GrpcCall,
    readonly service: string,
    readonly method: string,
  ) {
    this.peer = call.getPeer();
    this.deadline = deadlineMs(call.getDeadline());
  }

  authorization(): string | undefined {
    return this.header("authorization");
  }

  peerNames(): readonly string[] {
    return certificateNames(this.call.getAuthContext().sslPeerCertificate);
  }

  header(name: string): string | undefined {
    const value = this.call.metadata.get(name)[0];
    return typeof value === "string" ? value : undefined;
  }

  isCancelled(): boolean {
    return this.call.cancelled;
  }

  onCancel(listener: () => void): void {
    if (this.call.cancelled) listener();
    else this.call.once("cancelled", listener);
  }
}

/** The chain's view of a grpc-js call. */
export function incomingGrpcCall(call: GrpcCall, service: string, method: string): IncomingCall {
  return new GrpcIncomingCall(call, service, method);
}

/**
 * grpc-js handlers for one of our services: each call goes through the RPC
 * chain to the shared handler, and its result or status back to grpc-js.
 */
export function grpcHandlers<S extends DescService>(
  service: S,
  handlers: ServiceHandlers<S>,
  chain: RpcChain,
): grpc.UntypedServiceImplementation {
  const implementation: grpc.UntypedServiceImplementation = {};
  for (const method of service.methods) {
    const handler = handlers[method.localName as keyof ServiceHandlers<S>] as unknown;
    if (method.methodKind === "server_streaming") {
      implementation[method.localName] = streamingHandler(service, method.name, handler as StreamHandler<DescMessage, DescMessage>, chain);
      continue;
    }
    if (method.methodKind !== "unary") throw new Error(`${service.typeName}/${method.name}: only unary and server-streaming methods are served`);
    const unary = handler as UnaryHandler<DescMessage, DescMessage>;
    implementation[method.localName] = (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
      chain.serve(
        incomingGrpcCall(call, service.typeName, method.name),
        (ctx) => unary(requestOf(call.request) as never, ctx),
        unaryDone(callback),
      );
    };
  }
  return implementation;
}

/** The request, or INVALID_ARGUMENT (thrown inside the chain, so after authentication) when it did not parse. */
function requestOf(request: unknown): unknown {
  if (request instanceof MalformedRequest) throw new InvalidArgumentError("request", `is not a valid ${request.typeName} message`);
  return request;
}

/** The caller went away while a message waited to be written. */
class StreamGoneError extends Error {
  override name = "StreamGoneError";
}

/**
 * A server-streaming method through the chain: each message is written with
 * backpressure (send waits for "drain"); the stream ends with OK or the
 * failure's status in the trailers.
 */
function streamingHandler(service: DescService, name: string, handler: StreamHandler<DescMessage, DescMessage>, chain: RpcChain) {
  return (call: grpc.ServerWritableStream<unknown, unknown>) => {
    const send = (message: unknown): Promise<void> => {
      if (call.cancelled || call.destroyed) return Promise.reject(new StreamGoneError());
      if (call.write(message)) return Promise.resolve();
      return new Promise<void>((resolve, reject) => {
        const gone = () => {
          call.off("drain", drained);
          reject(new StreamGoneError());
        };
        const drained = () => {
          call.off("cancelled", gone);
          resolve();
        };
        call.once("drain", drained);
        call.once("cancelled", gone);
      });
    };
    chain
      .run(incomingGrpcCall(call, service.typeName, name), (ctx) => handler(requestOf(call.request) as never, ctx, send as never))
      .then(
        () => call.end(),
        (failure: RpcFailure) => {
          if (!call.cancelled) call.emit("error", grpcStatusOf(failure.status));
        },
      );
  };
}
