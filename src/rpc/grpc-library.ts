import * as grpc from "@grpc/grpc-js";
import type { RpcChain, RpcFailure } from "./chain.js";
import { Code, LibraryStatusError } from "./errors.js";
import { grpcStatusOf, incomingGrpcCall, unaryDone } from "./grpc-service.js";

type StreamCall = grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

/** "/grpc.health.v1.Health/Check" → ["grpc.health.v1.Health", "Check"]. */
function splitPath(path: string): [string, string] {
  const slash = path.lastIndexOf("/");
  return [path.slice(1, slash), path.slice(slash + 1)];
}

/**
 * A stand-in for the grpc-js server that the grpc-node libraries
 * (grpc-health-check, @grpc/reflection) add their services to: each of their
 * handlers is wrapped so that its calls pass through the same RPC chain as
 * ours (authentication for reflection, the log line, metrics). Their
 * streaming calls are kept in `streams`, so that a drain can end them.
 */
export function chainedServer(server: grpc.Server, chain: RpcChain, streams: Set<StreamCall>): Pick<grpc.Server, "addService"> {
  return {
    addService(definition, implementation) {
      const wrapped: grpc.UntypedServiceImplementation = {};
      for (const [name, method] of Object.entries(definition)) {
        // As grpc-js does: by key, else by the method's original (camelCase) name.
        const original: unknown = implementation[name] ?? (method.originalName ? implementation[method.originalName] : undefined);
        if (typeof original !== "function") continue;
        const [service, methodName] = splitPath(method.path);
        wrapped[name] = method.responseStream
          ? wrapStream(original as (call: StreamCall) => void, chain, streams, service, methodName)
          : wrapUnary(original as grpc.handleUnaryCall<unknown, unknown>, chain, service, methodName);
      }
      server.addService(definition, wrapped);
    },
  };
}

function wrapUnary(original: grpc.handleUnaryCall<unknown, unknown>, chain: RpcChain, service: string, method: string) {
  return (call: grpc.ServerUnaryCall<unknown, unknown>, callback: grpc.sendUnaryData<unknown>) => {
    chain.serve(
      incomingGrpcCall(call, service, method),
      () => libraryAnswer(original, call),
      unaryDone(callback),
    );
  };
}

/**
 * What a library's unary handler answers: at once when it calls back before
 * returning (grpc-health-check's Check does), which lets the chain settle
 * without a promise; else a promise of its later answer.
 */
export function libraryAnswer(original: grpc.handleUnaryCall<unknown, unknown>, call: grpc.ServerUnaryCall<unknown, unknown>): unknown {
  type Answer = { err: grpc.ServerErrorResponse | Partial<grpc.StatusObject> | null; value: unknown };
  let now: Answer | undefined;
  let later: ((answer: Answer) => void) | undefined;
  try {
    original(call, (err, value) => {
      const answer = { err, value };
      if (later) later(answer);
      else now ??= answer;
    });
  } catch (err) {
    // As a promise would: a throw after the answer does not change it.
    if (!now) throw err;
  }
  const unpack = ({ err, value }: Answer) => {
    if (err) throw new LibraryStatusError((err.code ?? Code.Unknown) as number as Code, err.details ?? "");
    return value;
  };
  if (now) return unpack(now);
  return new Promise<Answer>((resolve) => (later = resolve)).then(unpack);
}

function wrapStream(original: (call: StreamCall) => void, chain: RpcChain, streams: Set<StreamCall>, service: string, method: string) {
  return (call: StreamCall) => {
    streams.add(call);
    let started = false;
    chain
      .run(
        incomingGrpcCall(call, service, method),
        () =>
          new Promise<void>((resolve) => {
            started = true;
            call.once("finish", resolve);
            call.once("cancelled", resolve);
            original(call);
          }),
      )
      .then(
        () => undefined,
        (failure: RpcFailure) => {
          // Refused before the library saw the call (or cut off): answer with the status.
          if (!call.cancelled && (!started || !call.writableEnded)) call.emit("error", grpcStatusOf(failure.status));
        },
      )
      .finally(() => streams.delete(call));
  };
}
