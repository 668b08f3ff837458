import { fileURLToPath } from "node:url";
import {
  create,
  fromBinary,
  toBinary,
  type DescMessage,
  type DescMethodUnary,
  type DescService,
  type MessageInitShape,
  type MessageShape,
} from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createConnectTransport, createGrpcTransport, createGrpcWebTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import * as protoLoader from "@grpc/proto-loader";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";

export type ConnectTokenClient = Client<typeof TokenService>;

/** How a test client presents itself: TLS trust and client certificate, and a bearer credential. */
export interface ClientCredentials {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  bearer?: string;
}

function bearerInterceptor(bearer: string | undefined): Interceptor[] {
  if (!bearer) return [];
  return [
    (next) => (req) => {
      req.header.set("authorization", `Bearer ${bearer}`);
      return next(req);
    },
  ];
}

/** A Connect-ES client speaking the gRPC protocol over HTTP/2 (over TLS for https URLs). */
export function connectGrpcClient(baseUrl: string, creds: ClientCredentials = {}): ConnectTokenClient {
  return createClient(
    TokenService,
    createGrpcTransport({
      baseUrl,
      nodeOptions: { ca: creds.ca, cert: creds.cert, key: creds.key },
      interceptors: bearerInterceptor(creds.bearer),
    }),
  );
}

/** How a client reaches the HTTP listener: HTTP/1.1 (the default, as in clear text) or HTTP/2 (over TLS). */
export interface HttpClientOptions extends ClientCredentials {
  httpVersion?: "1.1" | "2";
}

function httpTransportOptions(baseUrl: string, o: HttpClientOptions) {
  return {
    baseUrl,
    httpVersion: o.httpVersion ?? "1.1",
    nodeOptions: { ca: o.ca, cert: o.cert, key: o.key },
    interceptors: bearerInterceptor(o.bearer),
  } as const;
}

/** A Connect-ES client speaking the Connect protocol with JSON, to the HTTP listener. */
export function connectJsonClient(baseUrl: string, o: HttpClientOptions = {}): ConnectTokenClient {
  return createClient(TokenService, createConnectTransport({ ...httpTransportOptions(baseUrl, o), useBinaryFormat: false }));
}

/** A Connect-ES client speaking the Connect protocol with binary protobuf, to the HTTP listener. */
export function connectBinaryClient(baseUrl: string, o: HttpClientOptions = {}): ConnectTokenClient {
  return createClient(TokenService, createConnectTransport({ ...httpTransportOptions(baseUrl, o), useBinaryFormat: true }));
}

/** A Connect-ES client speaking gRPC-Web (binary), to the HTTP listener. */
export function grpcWebClient(baseUrl: string, o: HttpClientOptions = {}): ConnectTokenClient {
  return createClient(TokenService, createGrpcWebTransport({ ...httpTransportOptions(baseUrl, o), useBinaryFormat: true }));
}

const protoRoot = fileURLToPath(new URL("../../proto", import.meta.url));

/** Plain-object messages as @grpc/proto-loader renders them (snake_case, longs as strings). */
export type GrpcMessage = Record<string, unknown>;

/** A stock @grpc/grpc-js client, loaded from the .proto file: an independent gRPC implementation. */
export interface GrpcJsTokenClient {
  call(method: "StoreSession" | "GetToken" | "RevokeSession" | "ListSessions" | "RevokeUserSessions", request: GrpcMessage, options?: { deadlineMs?: number; metadata?: Record<string, string> }): Promise<GrpcMessage>;
  close(): void;
}

/** gRPC error as grpc-js reports it. */
export interface GrpcJsError extends Error {
  code: grpc.status;
  details: string;
  metadata: grpc.Metadata;
}

export function grpcJsClient(baseUrl: string, creds: ClientCredentials = {}): GrpcJsTokenClient {
  const definition = protoLoader.loadSync("tokenservice/v1/token_service.proto", {
    includeDirs: [protoRoot],
    keepCase: true,
    longs: String,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const pkg = grpc.loadPackageDefinition(definition) as unknown as {
    tokenservice: { v1: { TokenService: grpc.ServiceClientConstructor } };
  };
  const url = new URL(baseUrl);
  const channel =
    url.protocol === "https:"
      ? grpc.credentials.createSsl(creds.ca ?? null, creds.key ?? null, creds.cert ?? null)
      : grpc.credentials.createInsecure();
  const client = new pkg.tokenservice.v1.TokenService(url.host, channel);
  return {
    call(method, request, options = {}) {
      return new Promise((resolve, reject) => {
        const fn = client[method] as unknown as (
          req: GrpcMessage,
          md: grpc.Metadata,
          opts: grpc.CallOptions,
          cb: (err: grpc.ServiceError | null, res: GrpcMessage) => void,
        ) => void;
        const callOptions: grpc.CallOptions = options.deadlineMs ? { deadline: Date.now() + options.deadlineMs } : {};
        const metadata = new grpc.Metadata();
        if (creds.bearer) metadata.set("authorization", `Bearer ${creds.bearer}`);
        for (const [k, v] of Object.entries(options.metadata ?? {})) metadata.set(k, v);
        fn.call(client, request, metadata, callOptions, (err, res) => (err ? reject(err) : resolve(res)));
      });
    },
    close() {
      client.close();
    },
  };
}

/** How one call ended, in the same terms for every client: code, ErrorInfo and the response. */
export interface CallOutcome<O = unknown> {
  /** gRPC code: 0 for OK. */
  code: number;
  /** google.rpc.ErrorInfo reason and metadata, when the error carried one. */
  reason?: string;
  metadata?: Record<string, string>;
  response?: O;
}

/**
 * A stock @grpc/grpc-js client that sends and receives raw bytes (encoded
 * here with protobuf-es), and reads the ErrorInfo from the standard
 * `grpc-status-details-bin` trailer itself.
 */
export function grpcJsRawClient(baseUrl: string, creds: ClientCredentials = {}) {
  const url = new URL(baseUrl);
  const channel =
    url.protocol === "https:"
      ? grpc.credentials.createSsl(creds.ca ?? null, creds.key ?? null, creds.cert ?? null)
      : grpc.credentials.createInsecure();
  const client = new grpc.Client(url.host, channel);
  return {
    call<I extends DescMessage, O extends DescMessage>(
      service: DescService,
      method: DescMethodUnary<I, O>,
      request: MessageInitShape<I>,
      options: { bearer?: string; timeoutMs?: number; metadata?: Record<string, string> } = {},
    ): Promise<CallOutcome<MessageShape<O>>> {
      const metadata = new grpc.Metadata();
      const bearer = options.bearer ?? creds.bearer;
      if (bearer) metadata.set("authorization", `Bearer ${bearer}`);
      for (const [k, v] of Object.entries(options.metadata ?? {})) metadata.set(k, v);
      const callOptions: grpc.CallOptions = options.timeoutMs ? { deadline: Date.now() + options.timeoutMs } : {};
      return new Promise((resolve) => {
        client.makeUnaryRequest(
          `/${service.typeName}/${method.name}`,
          (m: MessageShape<I>) => Buffer.from(toBinary(method.input, m)),
          (b: Buffer) => fromBinary(method.output, b),
          create(method.input, request),
          metadata,
          callOptions,
          (err, response) => {
            if (!err) return resolve({ code: 0, response });
            const [bin] = err.metadata?.get("grpc-status-details-bin") ?? [];
            const status = bin instanceof Buffer ? fromBinary(StatusSchema, bin) : undefined;
            const info = status?.details.map((d) => anyUnpack(d, ErrorInfoSchema)).find((i) => i !== undefined);
            resolve({ code: err.code, reason: info?.reason, metadata: info ? { ...info.metadata } : undefined });
          },
        );
      });
    },
    close() {
      client.close();
    },
  };
}
