import pg from "pg";
import type { Logger } from "../logger.js";

/** A broadcast between replicas: short, non-secret messages. */
export interface ChangeChannel {
  publish(message: string): Promise<void>;
  onMessage(listener: (message: string) => void): void;
  /** Called with false when the channel is lost (messages may be missed) and true when it is back. */
  onStateChange(listener: (connected: boolean) => void): void;
  /** True while messages are being received (otherwise waiters rely on polling). */
  readonly connected: boolean;
  /**
   * The PostgreSQL channel a write may NOTIFY itself, in its own statement, to
   * publish on this channel (none: only publish() does).
   */
  readonly notifyChannel?: string;
  close(): Promise<void>;
}

export const CHANNEL = "token_service_sessions";

/**
 * PostgreSQL LISTEN/NOTIFY on one dedicated connection, outside the pool, so
 * replicas wake each other's waiters at once. Reconnects with backoff after
 * the database goes away; until then messages are simply missed and waiters
 * fall back to polling the row.
 */
export class PgChannel implements ChangeChannel {
  readonly notifyChannel = CHANNEL;
  private client: pg.Client | undefined;
  private readonly listeners: Array<(message: string) => void> = [];
  private readonly stateListeners: Array<(connected: boolean) => void> = [];
  private closed = false;
  private retryMs = 250;
  private timer: NodeJS.Timeout | undefined;
  private downSince: number | undefined;

  private pinger: NodeJS.Timeout | undefined;

  /**
   * `publishVia` sends a NOTIFY some other way (the pooled write connection):
   * announcements must not depend on this replica's LISTEN connection being up.
   */
  constructor(
    private readonly url: string,
    private readonly logger: Logger,
    private readonly publishVia?: (channel: string, message: string) => Promise<void>,
    private readonly connectTimeoutMs = 3000,
  ) {}

  get connected(): boolean {
    return this.client !== undefined;
  }

  /** Connects once; on failure keeps retrying in the background and resolves anyway. */
  async start(): Promise<void> {
    await this.connect();
  }

  private async connect(): Promise<void> {
    if (this.closed) return;
    const client = new pg.Client({
      connectionString: this.url,
      connectionTimeoutMillis: this.connectTimeoutMs,
      keepAlive: true,
      keepAliveInitialDelayMillis: 10_000,
      query_timeout: this.connectTimeoutMs,
      application_name: "token-service-listen",
    });
    client.on("notification", (msg) => {
      if (msg.channel !== CHANNEL || !msg.payload) return;
      for (const l of this.listeners) l(msg.payload);
    });
    const lost = () => {
      if (this.client !== client) return;
      this.client = undefined;
      for (const l of this.stateListeners) l(false);
      client.removeAllListeners("error");
      client.on("error", () => undefined);
      void client.end().catch(() => undefined);
      this.schedule();
    };
    client.on("error", lost);
    client.on("end", lost);
    try {
      await client.connect();
      await client.query(`LISTEN ${CHANNEL}`);
      if (this.closed) {
        await client.end();
        return;
      }
      this.client = client;
      this.retryMs = 250;
      // A connection can die silently (a proxy, a failover): ping it, and treat a failed ping as lost.
      if (this.pinger) clearInterval(this.pinger);
      this.pinger = setInterval(() => {
        client.query("select 1").catch(lost);
      }, 15_000);
      this.pinger.unref();
      for (const l of this.stateListeners) l(true);
      if (this.downSince !== undefined) {
        this.logger.info({ downMs: Date.now() - this.downSince }, "change channel reconnected");
        this.downSince = undefined;
      }
    } catch {
      client.removeAllListeners("error");
      client.on("error", () => undefined);
      await client.end().catch(() => undefined);
      this.schedule();
    }
  }

  private schedule(): void {
    if (this.closed || this.timer) return;
    if (this.downSince === undefined) {
      this.downSince = Date.now();
      this.logger.warn("change channel (LISTEN) lost; waiters poll until it is back");
    }
    const delay = this.retryMs;
    this.retryMs = Math.min(10_000, this.retryMs * 2);
    this.timer = setTimeout(() => {
      this.timer = undefined;
      void this.connect();
    }, delay);
    this.timer.unref();
  }

  async publish(message: string): Promise<void> {
    try {
      if (this.publishVia) await this.publishVia(CHANNEL, message);
      else await this.client?.query("SELECT pg_notify($1, $2)", [CHANNEL, message]);
    } catch (err) {
      // Waiters poll as well, and cache entries expire; but say so.
      this.logger.warn({ err: { name: (err as Error).name } }, "could not announce a session change (NOTIFY)");
    }
  }

  onMessage(listener: (message: string) => void): void {
    this.listeners.push(listener);
  }

  onStateChange(listener: (connected: boolean) => void): void {
    this.stateListeners.push(listener);
  }

  async close(): Promise<void> {
    this.closed = true;
    if (this.timer) clearTimeout(this.timer);
    if (this.pinger) clearInterval(this.pinger);
    const client = this.client;
    this.client = undefined;
    if (client) await client.end().catch(() => undefined);
  }
}
