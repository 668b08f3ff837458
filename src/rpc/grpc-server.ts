import type { EventEmitter } from "node:events";
import * as grpc from "@grpc/grpc-js";
import type { TlsConfig } from "../config.js";
import { CertificateSource } from "./certificate-source.js";
import { chainedServer } from "./grpc-library.js";
import { adoptStreamTables } from "./http2-streams.js";
import type { RpcChain } from "./chain.js";

/**
 * Connection settings of the gRPC listener, chosen for callers that keep one
 * channel open for the life of their process (docs/calling.md, "The two listeners"):
 *
 * - keepalive: the server pings each connection every 60 s and drops it when
 *   no answer comes within 20 s, so a caller that vanished (power loss, a
 *   dropped NAT entry) frees its connection in under 90 s. grpc-js does not
 *   police client pings, so callers may set their own keepalive as they like.
 * - idle connections are kept: a channel that is quiet for hours must not pay
 *   a reconnect (and a TLS handshake) on its next GetToken.
 * - max connection age 30 min (grpc-js adds ±10 % jitter), then GOAWAY with
 *   5 min for calls in flight: clients reconnect by themselves, which spreads
 *   them over replicas that were added meanwhile. A health Watch stream still
 *   open when those 5 min end is reset; watchers re-subscribe, as the health
 *   protocol expects.
 * - up to 10,000 concurrent streams per connection, so that one channel can
 *   carry a refresh storm.
 * - channelz is off (nothing here serves it), which saves work on every call.
 */
export const GRPC_SERVER_SETTINGS = {
  "grpc.keepalive_time_ms": 60_000,
  "grpc.keepalive_timeout_ms": 20_000,
  "grpc.max_connection_age_ms": 30 * 60_000,
  "grpc.max_connection_age_grace_ms": 5 * 60_000,
  "grpc.max_concurrent_streams": 10_000,
  "grpc.enable_channelz": 0,
} as const;

/** Streaming calls in flight (health Watch, reflection), as grpc-js hands them over. */
type StreamCall = grpc.ServerWritableStream<unknown, unknown> | grpc.ServerDuplexStream<unknown, unknown>;

/** The gRPC listener: @grpc/grpc-js serving the token service, health and reflection. */
export interface GrpcListener {
  readonly server: grpc.Server;
  readonly host: string;
  readonly port: number;
  readonly tls: boolean;
  /** The certificate material the listener serves; `update` reaches new connections. */
  readonly certificates: CertificateSource | undefined;
  /** Ends every streaming call (health Watch, reflection) with OK; they would hold up a drain. */
  endStreams(): void;
  /** Stops accepting connections and sends GOAWAY; calls in flight go on. Resolves when every connection has closed. */
  shutdown(): Promise<void>;
  /** Closes every connection now. */
  forceClose(): void;
}

export interface GrpcListenerOptions {
  host: string;
  port: number;
  tls: TlsConfig | undefined;
  /** Largest request message; larger ones get RESOURCE_EXHAUSTED from grpc-js. */
  maxMessageBytes: number;
  chain: RpcChain;
  /** Adds the services; library services (health, reflection) go through `chained`, which puts them behind the chain. */
  addServices(server: grpc.Server, chained: Pick<grpc.Server, "addService">): void;
}

function credentialsFor(tls: TlsConfig | undefined): { credentials: grpc.ServerCredentials; certificates?: CertificateSource } {
  if (!tls) return { credentials: grpc.ServerCredentials.createInsecure() };
  const certificates = new CertificateSource(tls);
  // A client CA asks for client certificates without requiring them, so bearer callers and
  // mTLS callers share the port; only a certificate the CA verified identifies anyone.
  // (grpc-js names these parameters the other way round; the first is the server's identity.)
  const credentials = grpc.experimental.createCertificateProviderServerCredentials(
    certificates,
    tls.clientCa ? certificates : null,
    false,
  );
  return { credentials, certificates };
}

/**
 * Has each HTTP/2 server grpc-js makes for `server` keep its connections' streams in a `StreamTable`
 * (src/rpc/http2-streams.ts). grpc-js makes them in its `createHttp2Server` method, which its types keep
 * private; without it (another grpc-js) the servers keep node:http2's map, and a test says so.
 */
function tableStreams(server: grpc.Server): void {
  const target = server as unknown as { createHttp2Server?: (this: unknown, ...args: unknown[]) => EventEmitter };
  const create = target.createHttp2Server;
  if (typeof create !== "function") return;
  target.createHttp2Server = function (this: unknown, ...args: unknown[]) {
    const http2Server = create.apply(this, args);
    adoptStreamTables(http2Server);
    return http2Server;
  };
}

/** Starts the gRPC listener on host:port (port 0 picks a free one). */
export async function startGrpcServer(options: GrpcListenerOptions): Promise<GrpcListener> {
  const server = new grpc.Server({
    ...GRPC_SERVER_SETTINGS,
    "grpc.max_receive_message_length": options.maxMessageBytes,
  });
  tableStreams(server);
  const streams = new Set<StreamCall>();
  options.addServices(server, chainedServer(server, options.chain, streams));
  const { credentials, certificates } = credentialsFor(options.tls);
  const address = options.host.includes(":") ? `[${options.host}]:${options.port}` : `${options.host}:${options.port}`;
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync(address, credentials, (err, bound) => (err ? reject(err) : resolve(bound))),
  );
  let shutdown: Promise<void> | undefined;
  return {
    server,
    host: options.host,
    port,
    tls: options.tls !== undefined,
    certificates,
    endStreams() {
      for (const call of streams) call.end();
    },
    shutdown() {
      shutdown ??= new Promise<void>((resolve) => server.tryShutdown(() => resolve()));
      return shutdown;
    },
    forceClose() {
      server.forceShutdown();
    },
  };
}
