import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport, StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";

/** What one tool call on an MCP server gave. */
export type ToolOutcome =
  | { kind: "result"; result: unknown }
  /**
   * The MCP server answered the request with this HTTP status (401: it
   * refused the token; 403: the token lacks a scope) and, with it, this
   * `WWW-Authenticate` challenge (at most 4096 characters), if any.
   */
  | { kind: "refused"; status: number; challenge?: string; /** The forwarding proxy's reason for its own 401 (SESSION_NOT_FOUND, …). */ proxyReason?: string }
  /** The server answered with a JSON-RPC error (an unknown tool, bad arguments): its code only. */
  | { kind: "rejected"; code: number }
  | { kind: "unreachable" }
  | { kind: "timeout" };

/**
 * Calls one tool on an MCP server over Streamable HTTP (the SDK's client),
 * with `auth` as the bearer token, or the headers of the token service's
 * forwarding proxy (then `serverUrl` is the proxy's target, which adds the
 * token). A token must be one whose audience is this server (GetToken with
 * `resource` set to `serverUrl`): a token for any other audience is never
 * sent here.
 */
export async function callTool(
  serverUrl: string,
  auth: string | Record<string, string>,
  tool: string,
  args: Record<string, unknown>,
  timeoutMs: number,
): Promise<ToolOutcome> {
  const client = new Client({ name: "chat-gateway", version: "1.0.0" });
  let challenge: string | undefined;
  let proxyReason: string | undefined;
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), {
    requestInit: { headers: typeof auth === "string" ? { authorization: `Bearer ${auth}` } : auth },
    // The SDK's error has the status only: keep the challenge of a refusal, for a step-up, and the proxy's reason.
    fetch: async (url, init) => {
      const res = await fetch(url, init);
      const value = res.headers.get("www-authenticate");
      if (res.status === 401 || res.status === 403) challenge = value !== null && value.length <= 4096 ? value : undefined;
      if (res.status === 401 && /json/.test(res.headers.get("content-type") ?? "")) {
        const body = (await res.clone().json().catch(() => undefined)) as { error?: unknown; reason?: unknown } | undefined;
        if (body?.error === "no_usable_session" && typeof body.reason === "string") proxyReason = body.reason;
      }
      return res;
    },
  });
  try {
    await client.connect(transport, { timeout: timeoutMs });
    const result = await client.callTool({ name: tool, arguments: args }, undefined, { timeout: timeoutMs });
    return { kind: "result", result };
  } catch (err) {
    if (err instanceof StreamableHTTPError && typeof err.code === "number" && err.code >= 400) {
      return {
        kind: "refused",
        status: err.code,
        ...(challenge !== undefined && (err.code === 401 || err.code === 403) ? { challenge } : {}),
        ...(proxyReason !== undefined && err.code === 401 ? { proxyReason } : {}),
      };
    }
    if (err instanceof McpError) return err.code === ErrorCode.RequestTimeout ? { kind: "timeout" } : { kind: "rejected", code: err.code };
    return { kind: "unreachable" };
  } finally {
    await client.close().catch(() => undefined);
  }
}
