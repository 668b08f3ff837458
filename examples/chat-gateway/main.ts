import { createChatGateway } from "./gateway.js";

/** Starts the chat gateway from environment variables; see README.md. */
function required(name: string): string {
  const value = process.env[name];
  if (!value) {
    console.error(`chat-gateway: ${name} is required`);
    process.exit(2);
  }
  return value;
}

/** TOOL_SERVERS: `name=url` pairs separated by commas, e.g. `search=https://search.example.com/mcp`. */
function toolServers(value: string | undefined): Record<string, string> | undefined {
  if (!value) return undefined;
  const servers: Record<string, string> = {};
  for (const pair of value.split(",")) {
    const eq = pair.indexOf("=");
    const name = pair.slice(0, eq).trim();
    const url = pair.slice(eq + 1).trim();
    if (eq < 1 || !/^[A-Za-z0-9_.-]+$/.test(name) || !URL.canParse(url)) {
      console.error("chat-gateway: TOOL_SERVERS must be name=url pairs separated by commas");
      process.exit(2);
    }
    servers[name] = url;
  }
  return servers;
}

const port = Number(process.env.PORT ?? "8080");
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error("chat-gateway: PORT must be a port number");
  process.exit(2);
}

// With the token service's HTTP listener, model and tool calls go through its forwarding proxy (docs/forwarding.md).
const proxyUrl = process.env.TOKEN_SERVICE_HTTP_URL || undefined;
const gateway = createChatGateway({
  tokenServiceUrl: required("TOKEN_SERVICE_URL"),
  upstreamUrl: proxyUrl ? "" : required("UPSTREAM_URL"),
  proxy: proxyUrl ? { url: proxyUrl, models: process.env.MODELS_TARGET ?? "models" } : undefined,
  provider: process.env.PROVIDER ?? "corp",
  tokenServiceCredential: process.env.TOKEN_SERVICE_CREDENTIAL || undefined,
  loginUrl: process.env.LOGIN_URL || undefined,
  connectCallbackUrl: process.env.CONNECT_CALLBACK_URL || undefined,
  toolServers: toolServers(process.env.TOOL_SERVERS),
});

const url = await gateway.listen(port, process.env.HOST ?? "127.0.0.1");
console.error(`chat-gateway: listening on ${url}`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.once(signal, () => {
    console.error(`chat-gateway: ${signal}, finishing in-flight requests`);
    gateway.close().then(
      () => process.exit(0),
      () => process.exit(1),
    );
  });
}
