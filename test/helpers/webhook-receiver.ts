import { once } from "node:events";
import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

/** One request the receiver got: its headers and its raw body, as sent. */
export interface ReceivedWebhook {
  headers: IncomingHttpHeaders;
  body: string;
  at: number;
}

/** How the receiver answers the next request: a status, or never (the connection hangs until closed). */
export type Answer = number | "hang";

/**
 * A real HTTP server on 127.0.0.1 that takes webhook POSTs: it records each
 * one and answers from `answers` (first in, first out), then `fallback`.
 * `stop()` closes it (connections refused) and `start()` opens it again on
 * the same port, for "a receiver down for a while".
 */
export class WebhookReceiver {
  readonly received: ReceivedWebhook[] = [];
  readonly answers: Answer[] = [];
  fallback: Answer = 200;
  private server: Server | undefined;
  private readonly hung = new Set<ServerResponse>();
  port = 0;

  static async start(port = 0): Promise<WebhookReceiver> {
    const r = new WebhookReceiver();
    await r.open(port);
    return r;
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}/hooks`;
  }

  private async open(port: number): Promise<void> {
    const server = createServer((req, res) => {
      const chunks: Buffer[] = [];
      req.on("data", (c: Buffer) => chunks.push(c));
      req.on("end", () => {
        this.received.push({ headers: req.headers, body: Buffer.concat(chunks).toString("utf8"), at: Date.now() });
        const answer = this.answers.shift() ?? this.fallback;
        if (answer === "hang") {
          this.hung.add(res);
          return;
        }
        res.writeHead(answer, { "content-type": "text/plain" }).end("ok");
      });
    });
    server.listen(port, "127.0.0.1");
    await once(server, "listening");
    this.port = (server.address() as AddressInfo).port;
    this.server = server;
  }

  /** Opens again on the same port. */
  async restart(): Promise<void> {
    await this.open(this.port);
  }

  /** The bodies of the requests received, parsed. */
  events(): Array<{ id: string; type: string; timestamp: string; data: Record<string, unknown> }> {
    return this.received.map((r) => ({ id: String(r.headers["webhook-id"]), ...(JSON.parse(r.body) as { type: string; timestamp: string; data: Record<string, unknown> }) }));
  }

  async stop(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    if (!server) return;
    for (const res of this.hung) res.destroy();
    this.hung.clear();
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
