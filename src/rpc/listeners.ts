import type http from "node:http";
import type http2 from "node:http2";
import type { ConnectRouter } from "@connectrpc/connect";
import { connectNodeAdapter } from "@connectrpc/connect-node";
import { file_google_rpc_error_details } from "../../gen/google/rpc/error_details_pb.js";
import { ServerReflection as ServerReflectionV1 } from "../../gen/grpc/reflection/v1/reflection_pb.js";
import { ServerReflection as ServerReflectionV1Alpha } from "../../gen/grpc/reflection/v1alpha/reflection_pb.js";
import { Health } from "../../gen/health/v1/health_pb.js";
import { EventService, ProviderService, TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import type { Config } from "../config.js";
import type { RpcChain } from "./chain.js";
import { connectService, contextValuesFor } from "./connect-service.js";
import { startGrpcServer, type GrpcListener } from "./grpc-server.js";
import { grpcHandlers, grpcServiceDefinition } from "./grpc-service.js";
import type { ServiceHandlers } from "./handlers.js";
import { createHealthService, type HealthState } from "./health.js";
import { startHttpServer, type HttpListener } from "./http-server.js";
import { createReflection } from "./reflection.js";

type HttpRequest = http.IncomingMessage | http2.Http2ServerRequest;
type HttpResponse = http.ServerResponse | http2.Http2ServerResponse;

export interface ListenerOptions {
  config: Config;
  chain: RpcChain;
  health: HealthState;
  tokenService: ServiceHandlers<typeof TokenService>;
  providerService: ServiceHandlers<typeof ProviderService>;
  eventService: ServiceHandlers<typeof EventService>;
  /** Plain HTTP routes served on the HTTP listener before Connect (back-channel logout); true when handled. */
  httpRoute?: (req: HttpRequest, res: HttpResponse) => boolean;
}

/**
 * Starts both listeners over the same handlers and chain: grpc-js on
 * TOKEN_SERVICE_ADDR (with health and reflection), connect-node on
 * TOKEN_SERVICE_HTTP_ADDR unless it is off. On failure, what was started is
 * closed.
 */
export async function startListeners(o: ListenerOptions): Promise<{ grpc: GrpcListener; http: HttpListener | undefined }> {
  const { config, chain } = o;
  const grpc = await startGrpcServer({
    host: config.host,
    port: config.port,
    tls: config.tls,
    maxMessageBytes: config.maxMessageBytes,
    chain,
    addServices(server, chained) {
      server.addService(grpcServiceDefinition(TokenService), grpcHandlers(TokenService, o.tokenService, chain));
      server.addService(grpcServiceDefinition(ProviderService), grpcHandlers(ProviderService, o.providerService, chain));
      server.addService(grpcServiceDefinition(EventService), grpcHandlers(EventService, o.eventService, chain));
      createHealthService(o.health).addToServer(chained);
      if (config.reflection) {
        const described = [TokenService, ProviderService, EventService, Health, ServerReflectionV1, ServerReflectionV1Alpha];
        createReflection(described, [file_google_rpc_error_details]).addToServer(chained);
      }
    },
  });
  if (!config.http) return { grpc, http: undefined };
  try {
    const connect = connectNodeAdapter({
      routes: (router: ConnectRouter) => {
        router.service(TokenService, connectService(TokenService, o.tokenService, chain));
        router.service(ProviderService, connectService(ProviderService, o.providerService, chain));
        router.service(EventService, connectService(EventService, o.eventService, chain));
      },
      // gRPC has its own listener; this one speaks Connect and gRPC-Web.
      grpc: false,
      readMaxBytes: config.maxMessageBytes,
      contextValues: contextValuesFor,
    });
    const route = o.httpRoute;
    const handler = route ? (req: HttpRequest, res: HttpResponse) => route(req, res) || connect(req, res) : connect;
    const http = await startHttpServer(handler, config.http.host, config.http.port, config.tls);
    return { grpc, http };
  } catch (err) {
    grpc.forceClose();
    throw err;
  }
}
