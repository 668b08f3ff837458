import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport, StreamableHTTPError } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { ErrorCode, McpError } from "@modelcontextprotocol/sdk/types.js";

/** What one tool call on an MCP server gave. */
export type ToolOutcome =
  | { kind: "result"; result: unknown }
  /** The MCP server answered the request with this HTTP status (401: it refused the token). */
  | { kind: "refused"; status: number }
  /** The server answered with a JSON-RPC error (an unknown tool, bad arguments): its code only. */
  | { kind: "rejected"; code: number }
  | { kind: "unreachable" }
  | { kind: "timeout" };

/**
 * Calls one tool on an MCP server over Streamable HTTP (the SDK's client),
 * with `token` as the bearer token. The token must be one whose audience is
 * this server (GetToken with `resource` set to `serverUrl`): a token for any
 * other audience is never sent here.
 */
export async function callTool(
  serverUrl: string,
  token: string,
  tool: string,
  args: Record<string, unknown>,
  timeoutMs: number,
): Promise<ToolOutcome> {
  const client = new Client({ name: "chat-gateway", version: "1.0.0" });
  const transport = new StreamableHTTPClientTransport(new URL(serverUrl), {
    requestInit: { headers: { authorization: `Bearer ${token}` } },
  });
  try {
    await client.connect(transport, { timeout: timeoutMs });
    const result = await client.callTool({ name: tool, arguments: args }, undefined, { timeout: timeoutMs });
    return { kind: "result", result };
  } catch (err) {
    if (err instanceof StreamableHTTPError && typeof err.code === "number" && err.code >= 400) return { kind: "refused", status: err.code };
    if (err instanceof McpError) return err.code === ErrorCode.RequestTimeout ? { kind: "timeout" } : { kind: "rejected", code: err.code };
    return { kind: "unreachable" };
  } finally {
    await client.close().catch(() => undefined);
  }
}
