import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";

/** A protected resource (an MCP server stand-in) that publishes RFC 9728 metadata. */
export interface TestProtectedResource {
  /** Its resource URL, e.g. http://127.0.0.1:PORT/mcp. */
  readonly url: string;
  /** Requests it answered, by path. */
  readonly seen: string[];
  close(): Promise<void>;
}

/**
 * Serves RFC 9728 protected resource metadata naming `authorizationServer`:
 * at the path-aware well-known URL (`/.well-known/oauth-protected-resource/mcp`),
 * or, with `challengeOnly`, only at a URL named by the `resource_metadata` of
 * the `401 WWW-Authenticate` challenge the resource answers unauthenticated
 * calls with.
 */
export async function startProtectedResource(
  authorizationServer: string,
  options: {
    challengeOnly?: boolean;
    /** Accepts a bearer token at /mcp (200) when this says it is valid; without it every call gets the 401 challenge. */
    verify?: (token: string) => Promise<boolean>;
  } = {},
): Promise<TestProtectedResource> {
  const seen: string[] = [];
  let base = "";
  const server = http.createServer((req, res) => {
    const path = (req.url ?? "").split("?")[0]!;
    seen.push(path);
    const metadata = JSON.stringify({
      resource: `${base}/mcp`,
      authorization_servers: [authorizationServer],
      bearer_methods_supported: ["header"],
      scopes_supported: ["mcp:tools"],
    });
    const json = (status: number, body: string) => {
      res.writeHead(status, { "content-type": "application/json" });
      res.end(body);
    };
    if (!options.challengeOnly && path === "/.well-known/oauth-protected-resource/mcp") return json(200, metadata);
    if (options.challengeOnly && path === "/meta/resource.json") return json(200, metadata);
    const bearer = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "")?.[1];
    if (path === "/mcp" && bearer && options.verify) {
      void options.verify(bearer).then(
        (ok) => (ok ? json(200, '{"ok":true}') : json(401, '{"error":"invalid_token"}')),
        () => json(500, '{"error":"verify_failed"}'),
      );
      return;
    }
    if (path === "/mcp") {
      const where = options.challengeOnly ? `${base}/meta/resource.json` : `${base}/.well-known/oauth-protected-resource/mcp`;
      res.writeHead(401, { "www-authenticate": `Bearer error="invalid_token", resource_metadata="${where}"` });
      return res.end();
    }
    json(404, '{"error":"not_found"}');
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: `${base}/mcp`,
    seen,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
