import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";

/** A loopback HTTP server standing in for an internal host: it counts every connection and request it gets. */
export interface InternalStandIn {
  readonly port: number;
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly connections: number;
  readonly requests: string[];
  close(): Promise<void>;
}

async function listen(server: http.Server, host = "127.0.0.1", port = 0): Promise<number> {
  server.listen(port, host);
  await once(server, "listening");
  return (server.address() as AddressInfo).port;
}

function closer(server: http.Server): () => Promise<void> {
  return () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
}

/** The internal stand-in: answers anything with a plausible OIDC document, so only the count tells. */
export async function startInternalStandIn(): Promise<InternalStandIn> {
  let connections = 0;
  const requests: string[] = [];
  const server = http.createServer((req, res) => {
    requests.push(req.url ?? "");
    res.writeHead(200, { "content-type": "application/json" });
    res.end(JSON.stringify({ issuer: `http://${req.headers.host}`, keys: [], resource: `http://${req.headers.host}/mcp`, authorization_servers: [] }));
  });
  server.on("connection", () => connections++);
  const port = await listen(server);
  return {
    port,
    url: `http://127.0.0.1:${port}`,
    get connections() {
      return connections;
    },
    requests,
    close: closer(server),
  };
}

/** A stand-in authorization server that answers discovery with its own issuer (from the Host header) and the endpoints given. */
export interface FakeIssuer {
  readonly port: number;
  readonly url: string;
  /** Requests by path. */
  readonly seen: string[];
  close(): Promise<void>;
}

/**
 * Serves RFC 8414 and OpenID Connect discovery naming `endpoints(base)` (base:
 * the issuer as the request's Host header spells it); `/jwks` answers
 * `jwksStatus`; a `/mcp` path answers 401 with a challenge naming
 * `resourceMetadata`, when given.
 */
export async function startFakeIssuer(
  endpoints: (base: string) => Record<string, string>,
  /** `port`: a given one (a provider that comes up where the service already expects it), else any free one. */
  options: { host?: string; port?: number; jwksStatus?: number; discoveryStatus?: number; resourceMetadata?: string } = {},
): Promise<FakeIssuer> {
  const seen: string[] = [];
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0]!;
    seen.push(path);
    const base = `http://${req.headers.host}`;
    if (path.startsWith("/.well-known/openid-configuration") || path.startsWith("/.well-known/oauth-authorization-server")) {
      res.writeHead(options.discoveryStatus ?? 200, { "content-type": "application/json" });
      return res.end(
        JSON.stringify({
          issuer: base,
          authorization_endpoint: `${base}/auth`,
          token_endpoint: `${base}/token`,
          jwks_uri: `${base}/jwks`,
          response_types_supported: ["code"],
          code_challenge_methods_supported: ["S256"],
          id_token_signing_alg_values_supported: ["RS256"],
          ...endpoints(base),
        }),
      );
    }
    if (path === "/jwks") {
      res.writeHead(options.jwksStatus ?? 200, { "content-type": "application/json" });
      return res.end('{"keys":[]}');
    }
    if (path === "/mcp" && options.resourceMetadata) {
      res.writeHead(401, { "www-authenticate": `Bearer resource_metadata="${options.resourceMetadata}"` });
      return res.end();
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end('{"error":"not_found"}');
  });
  const host = options.host ?? "127.0.0.1";
  const port = await listen(server, host, options.port);
  return { port, url: `http://${host}:${port}`, seen, close: closer(server) };
}

/** A server whose every answer is a JSON document of `totalBytes`, streamed in 64 KiB chunks; it counts what it managed to write. */
export interface BigBodyServer {
  readonly url: string;
  /** Bytes whose write completed before the client went away. */
  readonly written: number;
  close(): Promise<void>;
}

export async function startBigBodyServer(totalBytes: number): Promise<BigBodyServer> {
  let written = 0;
  const chunk = Buffer.alloc(64 * 1024, 0x20);
  const server = http.createServer((req, res) => {
    res.writeHead(200, { "content-type": "application/json" });
    let sent = 0;
    const pump = () => {
      while (sent < totalBytes && !res.destroyed) {
        sent += chunk.length;
        const more = res.write(chunk, (err) => {
          if (!err) written += chunk.length;
        });
        if (!more) return void res.once("drain", pump);
      }
      if (!res.destroyed) res.end("{}");
    };
    pump();
  });
  const port = await listen(server);
  return {
    url: `http://127.0.0.1:${port}`,
    get written() {
      return written;
    },
    close: closer(server),
  };
}
