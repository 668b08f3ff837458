import { once } from "node:events";
import http, { type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { sendError, type GatewayError } from "./openai-error.js";
import { createTokenSource } from "./token-source.js";
import { callTool, type ToolOutcome } from "./tools.js";
import { createUpstream, type ForwardOutcome } from "./upstream.js";
import { proxyHeaders, proxyRefusal, targetUrl, type ProxyOptions } from "./proxy.js";
import { noSessionError } from "./token-source.js";

/** One structured log line. Holds user ids, paths, status codes and error codes; never a token. */
export type GatewayLogEntry = Record<string, string | number | boolean>;

export interface ChatGatewayOptions {
  /** Base URL of the token service, e.g. http://127.0.0.1:50051. */
  tokenServiceUrl: string;
  /** Base URL of an OpenAI-compatible server, e.g. http://127.0.0.1:8000. */
  upstreamUrl: string;
  /** Provider id in the token service, e.g. "corp". */
  provider: string;
  /** The gateway's own credential at the token service (sent as authorization Bearer). */
  tokenServiceCredential?: string;
  /** Where users sign in again; part of the 401 answers. */
  loginUrl?: string;
  /**
   * Who is asking. Default: the `x-user-id` header, which an authenticating
   * proxy in front of the gateway sets after it has checked the user. That
   * header must never come from the internet: the proxy has to strip any
   * client-supplied copy, and the gateway must not be reachable except
   * through it. Anyone who can set it can act as any user.
   */
  userFrom?: (req: IncomingMessage) => string | undefined | Promise<string | undefined>;
  /** Deadline of one GetToken call; default 5000 ms. */
  tokenTimeoutMs?: number;
  /**
   * The public URL of this gateway's connect callback, as registered at the
   * provider (e.g. https://chat.example.com/connect/callback). With it,
   * `GET /connect` sends the user's browser to the provider
   * (StartAuthorization) and the callback path finishes the connection
   * (CompleteAuthorization): the token service keeps the tokens, the gateway
   * never sees them. Without it, those paths answer 404.
   */
  connectCallbackUrl?: string;
  /**
   * MCP servers (Streamable HTTP) the gateway calls tools on for users, by
   * name: `{ search: "https://search.example.com/mcp" }`. Each URL is that
   * server's canonical URL, the RFC 8707 resource its tokens are for. For
   * every call the gateway asks GetToken with `resource` set to it, so a
   * server only ever receives a token meant for itself. `GET /connect` asks
   * for all of them at login.
   */
  toolServers?: Record<string, string>;
  /**
   * The token service's forwarding proxy (docs/forwarding.md): with it, model
   * calls go to its target `models` and tool calls to the target named like
   * the tool server, and the token service adds the user's token; the
   * gateway asks no GetToken and never holds a token. Without it, the
   * gateway takes tokens out with GetToken and sends them on itself.
   */
  proxy?: ProxyOptions;
  /** Deadline of one tool call on an MCP server; default 30 000 ms. */
  toolTimeoutMs?: number;
  /** Idle timeout on the upstream socket; default 300 000 ms. */
  upstreamIdleTimeoutMs?: number;
  /** Receives one entry per request; default: a JSON line on stderr. */
  log?: (entry: GatewayLogEntry) => void;
}

export interface ChatGateway {
  server: Server;
  /** Starts listening; resolves to the base URL (port 0 picks a free port). */
  listen(port: number, host?: string): Promise<string>;
  /** Stops accepting, ends idle connections and closes the clients of the token service and upstream. */
  close(): Promise<void>;
}

/** Paths passed through, and the method each accepts. */
const ROUTES: Record<string, string> = {
  "/v1/chat/completions": "POST",
  "/v1/models": "GET",
};

/** `POST /v1/tools/{server}/{tool}`: a tool call on a configured MCP server. */
const TOOL_PATH = /^\/v1\/tools\/([A-Za-z0-9_.-]+)\/([A-Za-z0-9_.\-/]+)$/;
/** Largest tool-call body (the tool's arguments, a JSON object). */
const MAX_TOOL_BODY_BYTES = 1024 * 1024;

async function readJsonObject(req: IncomingMessage): Promise<Record<string, unknown> | "too_large" | "invalid"> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_TOOL_BODY_BYTES) return "too_large";
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return {};
  try {
    const value: unknown = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    return value !== null && typeof value === "object" && !Array.isArray(value) ? (value as Record<string, unknown>) : "invalid";
  } catch {
    return "invalid";
  }
}

/** The `x-user-id` header set by the authenticating proxy: exactly one non-empty value. */
export function userFromHeader(req: IncomingMessage): string | undefined {
  const values = req.headersDistinct["x-user-id"];
  if (!values || values.length !== 1) return undefined;
  const user = values[0]?.trim();
  return user ? user : undefined;
}

/** An OpenAI-compatible pass-through that swaps the caller's identity for the user's own bearer token. */
export function createChatGateway(options: ChatGatewayOptions): ChatGateway {
  const tokens = createTokenSource({
    tokenServiceUrl: options.tokenServiceUrl,
    provider: options.provider,
    tokenServiceCredential: options.tokenServiceCredential,
    loginUrl: options.loginUrl,
    timeoutMs: options.tokenTimeoutMs,
  });
  const proxy = options.proxy;
  const upstream = createUpstream({
    baseUrl: proxy ? targetUrl(proxy, proxy.models) : options.upstreamUrl,
    idleTimeoutMs: options.upstreamIdleTimeoutMs,
    refusal: proxy ? (body) => proxyRefusal(body, options) : undefined,
  });
  const userFrom = options.userFrom ?? userFromHeader;
  const log = options.log ?? ((entry: GatewayLogEntry) => process.stderr.write(`${JSON.stringify(entry)}\n`));

  const callback = options.connectCallbackUrl ? new URL(options.connectCallbackUrl) : undefined;
  const toolServers = new Map(Object.entries(options.toolServers ?? {}));
  const toolTimeoutMs = options.toolTimeoutMs ?? 30_000;

  /** The signed-in user (recorded in `entry`), or undefined after answering 401. */
  async function authenticated(req: IncomingMessage, res: ServerResponse, entry: GatewayLogEntry): Promise<string | undefined> {
    const user = await Promise.resolve()
      .then(() => userFrom(req))
      .catch(() => undefined);
    if (!user) {
      sendError(res, { status: 401, type: "authentication_error", code: "no_user", message: "No authenticated user." });
      return undefined;
    }
    entry.user = user;
    return user;
  }

  /** `GET /connect` and the callback: the browser's round trip to the provider, run by the token service. */
  async function connect(req: IncomingMessage, res: ServerResponse, path: string, entry: GatewayLogEntry): Promise<GatewayLogEntry> {
    if (req.method !== "GET") {
      res.setHeader("allow", "GET");
      sendError(res, { status: 405, type: "invalid_request_error", code: "method_not_allowed", message: `Use GET for ${path}.` });
      return { ...entry, status: 405 };
    }
    const user = await authenticated(req, res, entry);
    if (!user) return { ...entry, status: 401 };
    const result =
      path === "/connect"
        ? await tokens.startConnect(user, callback!.href, [...toolServers.values()])
        : // The whole URL the browser came back to: the registered callback URL with the query the provider added.
          await tokens.finishConnect(user, `${callback!.origin}${callback!.pathname}${new URL(req.url ?? "/", "http://gateway.invalid").search}`);
    if (!result.ok) {
      sendError(res, { status: result.status, type: "invalid_request_error", code: result.reason.toLowerCase(), message: `Connecting failed: ${result.reason}.` });
      return { ...entry, status: result.status, connect_error: result.reason };
    }
    if ("url" in result) {
      res.writeHead(302, { location: result.url, "cache-control": "no-store" });
      res.end();
      return { ...entry, status: 302 };
    }
    const body = JSON.stringify({
      connected: true,
      provider: result.connected.provider,
      expires_at: result.connected.expiresAt?.toISOString(),
      ...(result.connected.steppedUp ? { stepped_up: true } : {}),
    });
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(body);
    return { ...entry, status: 200 };
  }

  /** A tool call on one MCP server, with a token whose audience is that server and nothing else. */
  async function tool(req: IncomingMessage, res: ServerResponse, server: string, name: string, entry: GatewayLogEntry): Promise<GatewayLogEntry> {
    entry.tool_server = server;
    entry.tool = name;
    const serverUrl = toolServers.get(server);
    if (!serverUrl) {
      sendError(res, { status: 404, type: "invalid_request_error", code: "unknown_tool_server", message: `No tool server named ${server}.` });
      return { ...entry, status: 404 };
    }
    if (req.method !== "POST") {
      res.setHeader("allow", "POST");
      sendError(res, { status: 405, type: "invalid_request_error", code: "method_not_allowed", message: "Use POST for tool calls." });
      return { ...entry, status: 405 };
    }
    const user = await authenticated(req, res, entry);
    if (!user) return { ...entry, status: 401 };
    const args = await readJsonObject(req);
    if (typeof args === "string") {
      const status = args === "too_large" ? 413 : 400;
      sendError(res, { status, type: "invalid_request_error", code: `arguments_${args}`, message: "The body must be the tool's arguments as a JSON object (at most 1 MiB)." });
      return { ...entry, status };
    }
    let outcome: ToolOutcome;
    let sessionId: (() => Promise<string | undefined>) | undefined;
    if (proxy) {
      // Through the proxy: its target for this server adds the token for this server's URL.
      outcome = await callTool(targetUrl(proxy, server), proxyHeaders(options.tokenServiceCredential, user), name, args, toolTimeoutMs);
      sessionId = () => tokens.newestSession(user);
      if (outcome.kind === "refused" && outcome.proxyReason) {
        const error = noSessionError(outcome.proxyReason as Parameters<typeof noSessionError>[0], options);
        sendError(res, error);
        return { ...entry, status: error.status, token_error: outcome.proxyReason };
      }
    } else {
      const gone = new AbortController();
      res.once("close", () => gone.abort());
      // Every call asks for a token for this server's URL: the token service caches and refreshes it per audience.
      const got = await tokens.tokenFor(user, gone.signal, serverUrl);
      if (!got.ok) {
        sendError(res, got.error);
        return { ...entry, status: got.error.status, token_error: got.cause };
      }
      outcome = await callTool(serverUrl, got.token, name, args, toolTimeoutMs);
      sessionId = () => Promise.resolve(got.sessionId);
    }
    if (outcome.kind === "refused" && outcome.status === 403 && outcome.challenge && callback && /insufficient_scope/.test(outcome.challenge)) {
      return stepUp(res, user, server, await sessionId(), outcome.challenge, entry);
    }
    const failure = toolFailure(outcome, server);
    if (failure) {
      sendError(res, failure);
      return { ...entry, status: failure.status, tool_error: failure.code };
    }
    res.writeHead(200, { "content-type": "application/json", "cache-control": "no-store" });
    res.end(JSON.stringify({ server, tool: name, result: (outcome as { result: unknown }).result }));
    return { ...entry, status: 200 };
  }

  /**
   * A tool call refused for want of a scope (403 insufficient_scope): the
   * token service starts a step-up of the user's session for the scopes the
   * server asked for, and the user gets the link. After the callback, the
   * same session holds the new scopes, and the retried call goes through.
   */
  async function stepUp(res: ServerResponse, user: string, server: string, sessionId: string | undefined, challenge: string, entry: GatewayLogEntry): Promise<GatewayLogEntry> {
    const started = sessionId ? await tokens.startStepUp(user, callback!.href, sessionId, challenge) : ({ ok: false, status: 502, reason: "NO_SESSION" } as const);
    if (!started.ok || !("url" in started)) {
      const reason = started.ok ? "UNKNOWN" : started.reason;
      const status = reason === "STEP_UP_LIMIT" ? 403 : started.ok ? 502 : started.status;
      sendError(res, { status, type: "permission_error", code: reason.toLowerCase(), message: `Tool server ${server} needs more permissions, and asking for them failed: ${reason}.` });
      return { ...entry, status, tool_error: "insufficient_scope", connect_error: reason };
    }
    sendError(res, {
      status: 403,
      type: "permission_error",
      code: "step_up_required",
      message: `Tool server ${server} needs more permissions; approve them at the login_url, then retry.`,
      loginUrl: started.url,
    });
    return { ...entry, status: 403, tool_error: "insufficient_scope" };
  }

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<GatewayLogEntry> {
    const path = new URL(req.url ?? "/", "http://gateway.invalid").pathname;
    const entry: GatewayLogEntry = { method: req.method ?? "", path };
    if (callback && (path === "/connect" || path === callback.pathname)) return connect(req, res, path, entry);
    const toolCall = TOOL_PATH.exec(path);
    if (toolCall) return tool(req, res, toolCall[1]!, toolCall[2]!, entry);
    const method = ROUTES[path];
    if (!method) {
      sendError(res, { status: 404, type: "invalid_request_error", code: "unknown_url", message: `Unknown path ${path}.` });
      return { ...entry, status: 404 };
    }
    if (req.method !== method) {
      res.setHeader("allow", method);
      sendError(res, { status: 405, type: "invalid_request_error", code: "method_not_allowed", message: `Use ${method} for ${path}.` });
      return { ...entry, status: 405 };
    }

    const user = await authenticated(req, res, entry);
    if (!user) return { ...entry, status: 401 };

    // Through the proxy, the token service adds the user's token; without it, the gateway asks GetToken for it.
    if (proxy) return { ...entry, ...describe(await upstream.forward(req, res, path, proxyHeaders(options.tokenServiceCredential, user))) };
    const gone = new AbortController();
    res.once("close", () => gone.abort());
    const got = await tokens.tokenFor(user, gone.signal);
    if (!got.ok) {
      sendError(res, got.error);
      return { ...entry, status: got.error.status, token_error: got.cause };
    }
    return { ...entry, ...describe(await upstream.forward(req, res, path, { authorization: `Bearer ${got.token}` })) };
  }

  const server = http.createServer((req, res) => {
    const started = performance.now();
    handle(req, res)
      .catch(() => {
        sendError(res, { status: 500, type: "server_error", code: "internal_error", message: "Internal gateway error." });
        return { method: req.method ?? "", status: 500, error: "internal" };
      })
      .then((entry) => {
        // An answer sent before the body was read (401, 503 …): drain it so the connection can be reused.
        if (!req.readableEnded) req.resume();
        log({ ...entry, ms: Math.round(performance.now() - started) });
      })
      .catch(() => undefined);
  });

  return {
    server,
    async listen(port, host = "127.0.0.1") {
      server.listen(port, host);
      await once(server, "listening");
      const address = server.address() as AddressInfo;
      const shown = address.family === "IPv6" ? `[${address.address}]` : address.address;
      return `http://${shown}:${address.port}`;
    },
    async close() {
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeIdleConnections();
      await closed;
      tokens.close();
      upstream.close();
    },
  };
}

/** A failed tool call as the answer for the client (undefined: it succeeded). Never copies the server's words. */
function toolFailure(outcome: ToolOutcome, server: string): GatewayError | undefined {
  switch (outcome.kind) {
    case "result":
      return undefined;
    case "refused":
      return {
        status: 502,
        type: "server_error",
        code: outcome.status === 401 || outcome.status === 403 ? "tool_server_refused_token" : "tool_server_error",
        message: `Tool server ${server} answered HTTP ${outcome.status}.`,
      };
    case "rejected":
      return { status: 400, type: "invalid_request_error", code: "tool_call_rejected", message: `Tool server ${server} rejected the call (JSON-RPC error ${outcome.code}).` };
    case "timeout":
      return { status: 504, type: "server_error", code: "tool_server_timeout", message: `Tool server ${server} did not answer in time.` };
    case "unreachable":
      return { status: 502, type: "server_error", code: "tool_server_unreachable", message: `Tool server ${server} could not be reached.` };
  }
}

function describe(outcome: ForwardOutcome): GatewayLogEntry {
  switch (outcome.kind) {
    case "response":
      return { status: outcome.status };
    case "unreachable":
      return { status: 502, upstream_error: outcome.errorCode };
    case "timeout":
      return { status: 504, upstream_error: "timeout" };
    case "aborted":
      return { status: 499, upstream_error: "aborted" };
  }
}
