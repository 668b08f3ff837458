import http, { type IncomingMessage, type ServerResponse } from "node:http";
import https from "node:https";
import { sendError, type GatewayError } from "./openai-error.js";

/**
 * Request headers copied to the upstream. An allowlist rather than a denylist:
 * hop-by-hop headers, the client's own `authorization`, cookies and the
 * identity header set by the authenticating proxy (`x-user-id`, or whatever
 * `userFrom` reads) can never leak through, whatever they are called.
 */
const REQUEST_HEADERS = ["content-type", "content-length", "accept", "user-agent", "x-request-id"] as const;

/** Response headers copied back to the client (no set-cookie, no hop-by-hop headers). */
const RESPONSE_HEADERS = ["content-type", "content-length", "cache-control", "retry-after", "x-request-id"] as const;

/** How one forwarded request ended, for the log line. */
export type ForwardOutcome =
  | { kind: "response"; status: number }
  | { kind: "unreachable"; errorCode: string }
  | { kind: "timeout" }
  | { kind: "aborted" };

export interface Upstream {
  /**
   * Sends `req` (body streamed, not buffered) to the same path at the
   * upstream with `auth` added (`Authorization: Bearer <token>`, or the
   * proxy's headers naming the gateway and the user), and streams the answer
   * back into `res` chunk by chunk as it arrives (server-sent events included).
   */
  forward(req: IncomingMessage, res: ServerResponse, path: string, auth: Record<string, string>): Promise<ForwardOutcome>;
  close(): void;
}

export interface UpstreamOptions {
  /** Base URL of the OpenAI-compatible server, e.g. http://127.0.0.1:8000. */
  baseUrl: string;
  /** Idle time on the upstream socket before giving up with 504; default 300 000 ms (models can be slow). */
  idleTimeoutMs?: number;
  /** For a JSON 401: the answer to send instead (the proxy's "no usable session"), or undefined to pass it on. */
  refusal?: (body: unknown) => GatewayError | undefined;
}

/** Reads a small JSON body (at most 64 KiB); undefined when it is not one. */
async function smallJson(res: IncomingMessage): Promise<{ text: Buffer; json: unknown }> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of res) {
    size += (chunk as Buffer).length;
    if (size > 64 * 1024) break;
    chunks.push(chunk as Buffer);
  }
  const text = Buffer.concat(chunks);
  try {
    return { text, json: JSON.parse(text.toString("utf8")) as unknown };
  } catch {
    return { text, json: undefined };
  }
}

export function createUpstream(options: UpstreamOptions): Upstream {
  const base = new URL(options.baseUrl);
  const basePath = base.pathname.replace(/\/+$/, "");
  const secure = base.protocol === "https:";
  const agent = secure ? new https.Agent({ keepAlive: true }) : new http.Agent({ keepAlive: true });
  const idleTimeoutMs = options.idleTimeoutMs ?? 300_000;

  return {
    forward(req, res, path, auth) {
      const target = new URL(base);
      const incoming = new URL(req.url ?? "/", "http://gateway.invalid");
      target.pathname = `${basePath}${path}`;
      target.search = incoming.search;

      const headers: Record<string, string> = { ...auth };
      for (const name of REQUEST_HEADERS) {
        const value = req.headers[name];
        if (typeof value === "string") headers[name] = value;
      }

      return new Promise<ForwardOutcome>((resolve) => {
        const send = secure ? https.request : http.request;
        const upReq = send(target, { method: req.method, headers, agent });
        let settled = false;
        const done = (outcome: ForwardOutcome) => {
          if (!settled) resolve(outcome);
          settled = true;
        };

        upReq.setTimeout(idleTimeoutMs, () => {
          if (!res.headersSent) {
            sendError(res, { status: 504, type: "server_error", code: "upstream_timeout", message: "The model server did not answer in time." });
          }
          done({ kind: "timeout" });
          upReq.destroy();
          res.destroy();
        });

        upReq.on("response", (upRes) => {
          if (upRes.statusCode === 401 && options.refusal && /json/.test(upRes.headers["content-type"] ?? "")) {
            void smallJson(upRes).then(({ text, json }) => {
              const error = options.refusal!(json);
              if (error) sendError(res, error);
              else res.writeHead(401, { "content-type": upRes.headers["content-type"] ?? "application/json" }).end(text);
              done({ kind: "response", status: error?.status ?? 401 });
            });
            return;
          }
          const out: Record<string, string> = {};
          for (const name of RESPONSE_HEADERS) {
            const value = upRes.headers[name];
            if (typeof value === "string") out[name] = value;
          }
          res.writeHead(upRes.statusCode ?? 502, out);
          res.flushHeaders();
          upRes.pipe(res);
          upRes.on("end", () => done({ kind: "response", status: upRes.statusCode ?? 502 }));
          // The upstream dropped the stream half-way: cut the client's stream too, so it sees an error.
          upRes.on("close", () => {
            if (!upRes.complete) res.destroy();
          });
        });

        upReq.on("error", (err: NodeJS.ErrnoException) => {
          if (settled) return;
          if (!res.headersSent) {
            // err.message is not copied into the answer: only a fixed text and the errno code.
            sendError(res, { status: 502, type: "server_error", code: "upstream_unreachable", message: "The model server could not be reached." });
            done({ kind: "unreachable", errorCode: err.code ?? "unknown" });
          } else {
            res.destroy();
            done({ kind: "aborted" });
          }
        });

        // The client went away (e.g. stopped a stream): stop the upstream generation as well.
        res.on("close", () => {
          if (!res.writableFinished) {
            upReq.destroy();
            done({ kind: "aborted" });
          }
        });

        req.pipe(upReq);
      });
    },
    close() {
      agent.destroy();
    },
  };
}
