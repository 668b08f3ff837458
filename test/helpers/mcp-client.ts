import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

/** Calls the test MCP server's `whoami` tool with a bearer token, through the MCP SDK's client; the verified claims it reports. */
export async function whoami(url: string, token: string): Promise<{ server: string; sub: string; aud: string }> {
  const client = new Client({ name: "test", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(new URL(url), { requestInit: { headers: { authorization: `Bearer ${token}` } } }));
  try {
    const result = (await client.callTool({ name: "whoami", arguments: {} })) as { content: Array<{ text: string }> };
    return JSON.parse(result.content[0]!.text) as { server: string; sub: string; aud: string };
  } finally {
    await client.close();
  }
}
