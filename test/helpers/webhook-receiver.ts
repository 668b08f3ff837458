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

/** Polls `check` until it returns something (not undefined or false), or fails naming `what`. */
export async function until<T>(check: () => T | undefined | false | Promise<T | undefined | false>, what: string, timeoutMs = 60_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await check();
    if (v !== undefined && v !== false) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

/** Where a test's sessions come from, and what it must never see again: their tokens and session ids. */
export interface SessionSource {
  provider: { login(user: string): Promise<{ access_token: string; refresh_token?: string }> };
  secrets: string[];
}

/** Logs a user in at the test provider and stores the session (session.created) through `client`; returns its id. */
export async function storeLoggedIn(
  source: SessionSource,
  client: { storeSession(req: { userId: string; provider: string; tokens: { accessToken: string; refreshToken?: string; expiresIn: bigint } }): Promise<{ sessionId: string }> },
  user: string,
): Promise<string> {
  const set = await source.provider.login(user);
  const { sessionId } = await client.storeSession({ userId: user, provider: "corp", tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, expiresIn: 3600n } });
  source.secrets.push(set.access_token, ...(set.refresh_token ? [set.refresh_token] : []), sessionId);
  return sessionId;
}
