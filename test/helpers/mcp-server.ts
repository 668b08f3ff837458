import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";
import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import { createRemoteJWKSet, jwtVerify, type JWTPayload } from "jose";

/** A test MCP server: Streamable HTTP, bearer JWT access tokens for its own URL only. */
export interface TestMcpServer {
  /** Its canonical URL (the RFC 8707 resource its tokens must name in `aud`), e.g. http://127.0.0.1:PORT/mcp. */
  readonly url: string;
  /** Tool calls it ran, with the token's subject and audience. */
  readonly calls: Array<{ tool: string; sub: string | undefined; aud: string | string[] | undefined }>;
  /** Requests it refused with 401, by reason (no_token, wrong_audience, not_at_jwt, expired, invalid), and with 403 (insufficient_scope). */
  readonly refused: Record<string, number>;
  close(): Promise<void>;
}

/** Scopes a test MCP server asks for, and the tools that need more. */
export interface McpScopeOptions {
  /** The `scope` of its 401 challenges (none by default). */
  challengeScope?: string;
  /** Its metadata's scopes_supported (default ["mcp:tools"]; empty: the field is left out). */
  scopesSupported?: string[];
  /**
   * Tools besides whoami, each needing these scopes in the token's `scope`
   * claim: a call without them is answered 403 with an `insufficient_scope`
   * challenge naming them (MCP authorization, "Runtime Insufficient Scope Errors").
   */
  toolScopes?: Record<string, string[]>;
}

/** The JSON-RPC tools/call a request body holds, if it is one: the tool's name. */
function toolCalled(body: unknown): string | undefined {
  const call = body as { method?: unknown; params?: { name?: unknown } } | null;
  return call?.method === "tools/call" && typeof call.params?.name === "string" ? call.params.name : undefined;
}

/**
 * Serves one tool, `whoami`, over the MCP Streamable HTTP transport of
 * `@modelcontextprotocol/sdk`. Every request needs `Authorization: Bearer`
 * with a JWT access token (RFC 9068: header `typ` at+jwt) signed by
 * `issuer`'s keys, from that issuer, whose `aud` is this server's canonical
 * URL. Anything else gets 401 with an RFC 6750 challenge naming the RFC 9728
 * metadata, which it serves at the path-aware well-known URL.
 */
export async function startMcpServer(issuer: string, name: string, scopes: McpScopeOptions = {}): Promise<TestMcpServer> {
  const calls: TestMcpServer["calls"] = [];
  const refused: Record<string, number> = {};
  let base = "";
  const url = () => `${base}/mcp`;
  const metadataUrl = () => `${base}/.well-known/oauth-protected-resource/mcp`;
  // The issuer's keys, found once through its RFC 8414 metadata (concurrent first requests share the lookup).
  let jwks: Promise<ReturnType<typeof createRemoteJWKSet>> | undefined;
  const keys = () =>
    (jwks ??= fetch(`${issuer}/.well-known/oauth-authorization-server`)
      .then((res) => res.json() as Promise<{ jwks_uri: string }>)
      .then((metadata) => createRemoteJWKSet(new URL(metadata.jwks_uri)))
      .catch((err: unknown) => {
        jwks = undefined;
        throw err;
      }));

  /** The verified claims, or the reason for a 401. */
  async function verify(header: string | undefined): Promise<JWTPayload | string> {
    const m = /^Bearer ([A-Za-z0-9._~+/-]+=*)$/.exec(header ?? "");
    if (!m) return "no_token";
    try {
      const { payload } = await jwtVerify(m[1]!, await keys(), { issuer, audience: url(), typ: "at+jwt" });
      return payload;
    } catch (err) {
      const code = (err as { code?: string }).code;
      if (code === "ERR_JWT_CLAIM_VALIDATION_FAILED" && (err as { claim?: string }).claim === "aud") return "wrong_audience";
      if (code === "ERR_JWT_CLAIM_VALIDATION_FAILED" && (err as { claim?: string }).claim === "typ") return "not_at_jwt";
      if (code === "ERR_JWT_EXPIRED") return "expired";
      return "invalid";
    }
  }

  const server = http.createServer((req, res) => {
    void (async () => {
      const path = (req.url ?? "").split("?")[0];
      if (path === "/.well-known/oauth-protected-resource/mcp") {
        res.writeHead(200, { "content-type": "application/json" });
        const supported = scopes.scopesSupported ?? ["mcp:tools"];
        res.end(
          JSON.stringify({ resource: url(), authorization_servers: [issuer], bearer_methods_supported: ["header"], ...(supported.length ? { scopes_supported: supported } : {}) }),
        );
        return;
      }
      if (path !== "/mcp") {
        res.writeHead(404).end();
        return;
      }
      const claims = await verify(req.headers.authorization);
      if (typeof claims === "string") {
        refused[claims] = (refused[claims] ?? 0) + 1;
        const error = claims === "no_token" ? "" : ', error="invalid_token"';
        const scope = scopes.challengeScope ? `, scope="${scopes.challengeScope}"` : "";
        res.writeHead(401, { "www-authenticate": `Bearer resource_metadata="${metadataUrl()}"${scope}${error}` });
        res.end();
        return;
      }
      let body: unknown;
      if (req.method === "POST") {
        const chunks: Buffer[] = [];
        for await (const chunk of req) chunks.push(chunk as Buffer);
        body = JSON.parse(Buffer.concat(chunks).toString("utf8")) as unknown;
      }
      const granted = typeof claims.scope === "string" ? claims.scope.split(" ") : [];
      const tool = toolCalled(body);
      const needed = tool ? scopes.toolScopes?.[tool] : undefined;
      if (needed && !needed.every((s) => granted.includes(s))) {
        refused.insufficient_scope = (refused.insufficient_scope ?? 0) + 1;
        res.writeHead(403, {
          "www-authenticate": `Bearer error="insufficient_scope", scope="${needed.join(" ")}", resource_metadata="${metadataUrl()}", error_description="${tool} needs more"`,
        });
        res.end();
        return;
      }
      // Stateless: one server and transport per request, answered as JSON.
      const mcp = new McpServer({ name, version: "1.0.0" });
      for (const extra of Object.keys(scopes.toolScopes ?? {})) {
        mcp.registerTool(extra, { description: `A tool that needs ${scopes.toolScopes![extra]!.join(" ")}.` }, async () => {
          calls.push({ tool: extra, sub: claims.sub, aud: claims.aud });
          return { content: [{ type: "text", text: JSON.stringify({ server: name, tool: extra, scope: granted }) }] };
        });
      }
      mcp.registerTool("whoami", { description: "Who the bearer token is for, as this server verified it." }, async () => {
        calls.push({ tool: "whoami", sub: claims.sub, aud: claims.aud });
        return { content: [{ type: "text", text: JSON.stringify({ server: name, sub: claims.sub, aud: claims.aud }) }] };
      });
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined, enableJsonResponse: true });
      res.once("close", () => {
        void transport.close();
        void mcp.close();
      });
      await mcp.connect(transport);
      await transport.handleRequest(req, res, body);
    })().catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return {
    url: url(),
    calls,
    refused,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
