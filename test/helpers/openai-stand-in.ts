import { createHash } from "node:crypto";
import { once } from "node:events";
import http from "node:http";
import type { AddressInfo } from "node:net";

/** One request the stand-in received: its method, path and headers as they arrived. */
export interface SeenRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
}

/**
 * A real OpenAI-compatible server for forwarding tests, on 127.0.0.1:0.
 *
 * - `POST /v1/chat/completions` checks `Authorization: Bearer` (or `api-key`) with
 *   `accept` (401 with `WWW-Authenticate: Bearer error="invalid_token"`
 *   otherwise) and answers a completion; with `stream: true` it sends
 *   `chunks` server-sent events, each only after `gate(n)` resolved for the
 *   one before (so a test can prove each event reached it before the next
 *   was sent), and records "sent n" in `events`.
 * - `POST /v1/upload` reads the body and answers its size and SHA-256.
 * - `GET /v1/hang` answers nothing until the client goes away; `hangArrived`
 *   and `hangAborted` resolve when the request came and when it was aborted.
 * - `GET /v1/silent` never answers; `GET /v1/idle` sends its headers and a
 *   comment, then its last event once `idle` resolves.
 * - `POST /v1/scoped` answers 403 with an `insufficient_scope` challenge.
 */
export interface OpenAiStandIn {
  /** http://127.0.0.1:PORT */
  readonly url: string;
  readonly requests: SeenRequest[];
  /** Decides whether a bearer token is valid (default: any non-empty one). */
  accept: (token: string) => boolean | Promise<boolean>;
  /** Events in order: "sent n" as the server wrote SSE event n; tests add their own ("received n"). */
  readonly events: string[];
  /** Called before SSE event n+1 is sent; resolves when it may be sent (default: at once). */
  gate: (n: number) => Promise<void>;
  readonly hangArrived: Promise<void>;
  /** What `GET /v1/idle` waits for after its first comment. */
  idle: Promise<void>;
  readonly hangAborted: Promise<void>;
  close(): Promise<void>;
}

const CHUNKS = ["Hel", "lo", ", ", "wor", "ld"];

function bearerOf(req: http.IncomingMessage): string {
  const m = /^Bearer (\S+)$/.exec(req.headers.authorization ?? "");
  // Azure OpenAI style: the key alone in api-key.
  return m ? m[1]! : String(req.headers["api-key"] ?? "");
}

async function readAll(req: http.IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

export async function startOpenAiStandIn(): Promise<OpenAiStandIn> {
  let arrived!: () => void;
  let aborted!: () => void;
  const hangArrived = new Promise<void>((r) => (arrived = r));
  const hangAborted = new Promise<void>((r) => (aborted = r));
  const state: OpenAiStandIn = {
    url: "",
    requests: [],
    accept: (token) => token !== "",
    events: [],
    gate: () => Promise.resolve(),
    hangArrived,
    hangAborted,
    idle: Promise.resolve(),
    close: () => Promise.resolve(),
  };
  const server = http.createServer((req, res) => {
    void (async () => {
      const path = (req.url ?? "").split("?")[0]!;
      state.requests.push({ method: req.method ?? "", path: req.url ?? "", headers: req.headers });
      if (path === "/v1/hang") {
        arrived();
        res.once("close", () => {
          if (!res.writableEnded) aborted();
        });
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(": waiting\n\n");
        return;
      }
      if (path === "/v1/idle") {
        // Headers and a comment at once, then nothing until the test says so.
        res.writeHead(200, { "content-type": "text/event-stream" });
        res.write(": open\n\n");
        await state.idle;
        res.end("data: late\n\n");
        return;
      }
      if (path === "/v1/silent") {
        // Never answers: the client's first-byte timeout ends it.
        return;
      }
      if (path === "/v1/upload") {
        const hash = createHash("sha256");
        let bytes = 0;
        for await (const chunk of req) {
          bytes += (chunk as Buffer).length;
          hash.update(chunk as Buffer);
        }
        res.writeHead(200, { "content-type": "application/json" });
        res.end(JSON.stringify({ bytes, sha256: hash.digest("hex") }));
        return;
      }
      if (path === "/v1/scoped") {
        await readAll(req);
        res.writeHead(403, { "www-authenticate": 'Bearer error="insufficient_scope", scope="models:write"', "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "needs models:write", type: "insufficient_scope" } }));
        return;
      }
      if (path !== "/v1/chat/completions" || req.method !== "POST") {
        res.writeHead(404).end();
        return;
      }
      const body = JSON.parse((await readAll(req)).toString("utf8") || "{}") as { model?: string; stream?: boolean };
      if (!(await state.accept(bearerOf(req)))) {
        res.writeHead(401, { "www-authenticate": 'Bearer error="invalid_token", error_description="the access token is not valid"', "content-type": "application/json" });
        res.end(JSON.stringify({ error: { message: "invalid token", type: "invalid_request_error" } }));
        return;
      }
      const model = body.model ?? "stand-in";
      if (!body.stream) {
        res.writeHead(200, { "content-type": "application/json", "set-cookie": "upstream=1", connection: "keep-alive, x-upstream-hop", "x-upstream-hop": "1" });
        res.end(JSON.stringify({ id: "cmpl-1", object: "chat.completion", model, choices: [{ index: 0, message: { role: "assistant", content: CHUNKS.join("") }, finish_reason: "stop" }] }));
        return;
      }
      res.writeHead(200, { "content-type": "text/event-stream", "cache-control": "no-cache" });
      for (let n = 0; n < CHUNKS.length; n++) {
        if (n > 0) await state.gate(n - 1);
        const chunk = { id: "cmpl-1", object: "chat.completion.chunk", model, choices: [{ index: 0, delta: { content: CHUNKS[n] } }] };
        state.events.push(`sent ${n}`);
        res.write(`data: ${JSON.stringify(chunk)}\n\n`);
      }
      res.end("data: [DONE]\n\n");
    })().catch(() => {
      if (!res.headersSent) res.writeHead(500);
      res.end();
    });
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  Object.assign(state, {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: () => {
      server.closeAllConnections();
      return new Promise<void>((resolve) => server.close(() => resolve()));
    },
  });
  return state;
}

/** The SSE events of a response body as they arrive: each `data:` payload, one at a time. */
export async function* sseEvents(body: ReadableStream<Uint8Array>): AsyncGenerator<string> {
  const decoder = new TextDecoder();
  let buffer = "";
  for await (const part of body as unknown as AsyncIterable<Uint8Array>) {
    buffer += decoder.decode(part, { stream: true });
    let end: number;
    while ((end = buffer.indexOf("\n\n")) !== -1) {
      const event = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = event
        .split("\n")
        .filter((l) => l.startsWith("data: "))
        .map((l) => l.slice(6))
        .join("\n");
      if (data !== "") yield data;
    }
  }
}
