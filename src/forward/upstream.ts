import { Transform, type Readable } from "node:stream";
import { Pool, type Dispatcher } from "undici";
import type { ForwardConfig, ForwardTarget } from "./config.js";

/** How long an idle upstream connection is kept for the next request. */
const KEEP_ALIVE_MS = 30_000;

/** A configured target and its connection pool (HTTP/1.1 keep-alive, TLS against the system CAs or its CA file). */
export interface Upstream {
  readonly target: ForwardTarget;
  readonly origin: string;
  /** Host name and port, for span attributes. */
  readonly host: string;
  readonly port: number;
  /** The base URL's path without a trailing slash ("" for the root). */
  readonly basePath: string;
  readonly pool: Pool;
}

function upstreamOf(target: ForwardTarget): Upstream {
  const url = new URL(target.url);
  const pool = new Pool(url.origin, {
    connect: { timeout: target.connectTimeoutMs, ...(target.ca ? { ca: target.ca } : {}) },
    keepAliveTimeout: KEEP_ALIVE_MS,
    headersTimeout: target.firstByteTimeoutMs,
    // Idle streams (SSE, MCP) are allowed: no timeout between body chunks.
    bodyTimeout: 0,
  });
  const port = Number(url.port || (url.protocol === "https:" ? 443 : 80));
  return { target, origin: url.origin, host: url.hostname, port, basePath: url.pathname.replace(/\/+$/, ""), pool };
}

/** Two targets that need the same pool (the same URL, timeouts and CA). */
function samePool(a: ForwardTarget, b: ForwardTarget): boolean {
  return a.url === b.url && a.connectTimeoutMs === b.connectTimeoutMs && a.firstByteTimeoutMs === b.firstByteTimeoutMs && (a.ca?.equals(b.ca ?? Buffer.alloc(0)) ?? b.ca === undefined);
}

/**
 * The targets by id, each with its pool. A reload keeps the pool of a
 * target whose URL, timeouts and CA did not change; the pools of removed or
 * changed targets close once their requests in flight are done.
 */
export class Upstreams {
  private byId = new Map<string, Upstream>();
  replayMaxBytes = 0;

  constructor(config: ForwardConfig) {
    this.update(config);
  }

  get(id: string): Upstream | undefined {
    return this.byId.get(id);
  }

  update(config: ForwardConfig): void {
    const next = new Map<string, Upstream>();
    for (const target of config.targets) {
      const old = this.byId.get(target.id);
      next.set(target.id, old && samePool(old.target, target) ? { ...old, target } : upstreamOf(target));
    }
    const kept = new Set([...next.values()].map((u) => u.pool));
    for (const old of this.byId.values()) if (!kept.has(old.pool)) void old.pool.close().catch(() => undefined);
    this.byId = next;
    this.replayMaxBytes = config.replayMaxBytes;
  }

  /** Closes every pool now, cutting off requests in flight. */
  async close(): Promise<void> {
    await Promise.all([...this.byId.values()].map((u) => u.pool.destroy().catch(() => undefined)));
    this.byId.clear();
  }
}

/** A request body being sent upstream, kept while it fits in the replay limit. */
export class ReplayableBody {
  private chunks: Buffer[] | undefined = [];
  private size = 0;
  /** True once the caller's body ended (all of it was read). */
  complete = false;

  constructor(
    private readonly source: Readable | undefined,
    private readonly limit: number,
  ) {
    if (!source) this.complete = true;
  }

  /** The body for the first attempt: the caller's, streamed with back-pressure, copied aside while it fits. */
  first(): Readable | undefined {
    if (!this.source) return undefined;
    const tap = new Transform({
      transform: (chunk: Buffer, _encoding, callback) => {
        if (this.chunks) {
          this.size += chunk.length;
          if (this.size > this.limit) this.chunks = undefined;
          else this.chunks.push(chunk);
        }
        callback(null, chunk);
      },
      flush: (callback) => {
        this.complete = true;
        callback();
      },
    });
    // pipe() carries back-pressure; an error or an abort of the caller's body ends the copy too.
    this.source.once("error", (err) => tap.destroy(err));
    this.source.once("aborted", () => tap.destroy(new Error("the caller's request was aborted")));
    return this.source.pipe(tap);
  }

  /** The whole body again, for a retry; undefined when it was not all read or did not fit. */
  again(): Buffer | null | undefined {
    if (!this.complete || !this.chunks) return undefined;
    return this.source ? Buffer.concat(this.chunks) : null;
  }
}

/** Sends one request through the target's pool; the answer's body is a stream the caller reads. */
export function send(upstream: Upstream, options: { method: string; path: string; headers: Record<string, string | string[]>; body: Readable | Buffer | null | undefined; signal: AbortSignal }): Promise<Dispatcher.ResponseData> {
  return upstream.pool.request({
    method: options.method as Dispatcher.HttpMethod,
    path: options.path,
    headers: options.headers,
    body: options.body ?? null,
    signal: options.signal,
    headersTimeout: upstream.target.firstByteTimeoutMs,
    bodyTimeout: 0,
  });
}
