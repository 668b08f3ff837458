import { randomBytes } from "node:crypto";
import type { WebhookEndpoint, WebhooksConfig } from "../config.js";
import type { WebhookDeliveryRow, WebhookRepository } from "../db/webhook-repository.js";
import { errSummary, type Logger } from "../logger.js";
import { retryDelayMs } from "./backoff.js";
import type { WebhookMetrics } from "./metrics.js";
import type { Send } from "./sender.js";
import { newDeliveryId, signWebhook, webhookBody } from "./signer.js";

/** An event of the outbox as a webhook sends it: no token or secret is in `data`. */
export interface WebhookEvent {
  /** The event's cursor in the outbox (opaque, stable). */
  cursor: string;
  /** Its kind, the payload's `type`: session.refresh_failing, provider.deleted, … */
  type: string;
  provider: string | null;
  /** When it happened. */
  at: Date;
  data: Record<string, unknown>;
}

/** The outbox as the fan-out reads it. */
export interface WebhookOutbox {
  /** Where a webhook added at `since` starts: before the first event made from then on (the newest cursor when none is). */
  head(since: Date): Promise<string>;
  /**
   * Up to `limit` events after `cursor`, in commit order, and the cursor to
   * read after next (`cursor` when nothing is new). `expired`: the cursor was
   * older than the events' retention, and reading went on from the oldest kept.
   */
  read(cursor: string, limit: number, kinds: readonly string[] | undefined): Promise<{ events: WebhookEvent[]; cursor: string; expired?: boolean }>;
  /** Calls `listener` when events may have been appended (a hint); returns the unsubscribe. */
  subscribe?(listener: () => void): () => void;
}

/** Events read per webhook per fan-out step. */
const FAN_OUT_BATCH = 200;
/** How often the cluster-wide gauges are read, and the table swept. */
const STATS_EVERY_MS = 5000;
const SWEEP_EVERY_MS = 60_000;

/** Whether a webhook takes events of this kind. */
export function wants(endpoint: WebhookEndpoint, type: string): boolean {
  return endpoint.events.includes("*") || endpoint.events.includes(type);
}

/** The metric label of an attempt's result: success, http_4xx (by class), timeout, connection, destination_not_allowed. */
function resultLabel(status: number, error: string | undefined): string {
  if (error === undefined) return "success";
  return status > 0 ? `http_${Math.floor(status / 100)}xx` : error;
}

/**
 * Delivers the webhooks of the configuration, at least once, from the
 * events outbox. Every replica runs one: each turn it moves every webhook's
 * cursor over the outbox (the deliveries are inserted in the same
 * transaction), then takes the lease on due deliveries (one replica at a
 * time per delivery) and attempts them, up to `concurrency` at once. A
 * failed attempt is retried with exponential backoff and full jitter until
 * webhooks.max_age_seconds after the event; then the delivery is a dead
 * letter. A replica killed mid-attempt leaves the delivery to the next
 * replica once its lease lapses, with the same id, so the same webhook-id.
 */
export class WebhookDispatcher {
  private config: WebhooksConfig;
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<void> | undefined;
  private stopped = true;
  private failing = false;
  private readonly inflight = new Set<Promise<void>>();
  private lastStats = 0;
  private lastSweep = 0;
  /** Woken by new events while a turn runs: another turn follows at once. */
  private again = false;
  private unsubscribe: (() => void) | undefined;

  constructor(
    config: WebhooksConfig,
    private readonly deps: {
      repo: WebhookRepository;
      outbox: WebhookOutbox | undefined;
      send: Send;
      metrics: WebhookMetrics;
      logger: Logger;
      replicaId: string;
      now?: () => Date;
      random?: () => number;
    },
  ) {
    this.config = config;
    this.noteAdded(config);
    deps.metrics.configured(config.endpoints.map((e) => e.id));
  }

  /**
   * When each webhook was configured on this replica: one added by a reload
   * takes the events made from then on, even when the turn that starts its
   * cursor comes later (a busy replica, a slow database).
   */
  private readonly addedAt = new Map<string, Date>();

  private noteAdded(config: WebhooksConfig): void {
    const now = this.now();
    const ids = new Set(config.endpoints.map((e) => e.id));
    for (const id of ids) if (!this.addedAt.has(id)) this.addedAt.set(id, now);
    for (const id of this.addedAt.keys()) if (!ids.has(id)) this.addedAt.delete(id);
  }

  get settings(): WebhooksConfig {
    return this.config;
  }

  /** Applies a reload: new, changed and removed webhooks and settings take effect on the next turn. */
  update(config: WebhooksConfig): void {
    this.config = config;
    this.noteAdded(config);
    this.deps.metrics.configured(config.endpoints.map((e) => e.id));
  }

  private now(): Date {
    return this.deps.now?.() ?? new Date();
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.unsubscribe = this.deps.outbox?.subscribe?.(() => this.wake());
    this.schedule(0);
  }

  /** New events may exist: the next turn starts now (or right after the one running). */
  private wake(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    if (this.timer) clearTimeout(this.timer);
    this.schedule(0);
  }

  private schedule(delayMs: number): void {
    if (this.stopped) return;
    this.timer = setTimeout(() => {
      this.running = this.turn().finally(() => {
        this.running = undefined;
        const again = this.again;
        this.again = false;
        this.schedule(again ? 0 : this.config.intervalMs * (1 + Math.random() * 0.1));
      });
    }, delayMs);
    this.timer.unref();
  }

  private async turn(): Promise<void> {
    try {
      await this.runOnce();
      if (this.failing) this.deps.logger.info({ task: "webhooks" }, "webhook dispatcher recovered");
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.deps.logger.warn({ task: "webhooks", err: errSummary(err) }, "webhook dispatcher turn failed; will retry");
      this.failing = true;
    }
  }

  /** One turn: fan-out, claim and start attempts (not awaited), and now and then the gauges and the sweep. */
  async runOnce(): Promise<void> {
    const { repo } = this.deps;
    const { endpoints } = this.config;
    if (this.deps.outbox) for (const endpoint of endpoints) await this.fanOut(endpoint, this.deps.outbox);
    const free = this.config.concurrency - this.inflight.size;
    const now = this.now();
    const claimed = await repo.claim(
      endpoints.map((e) => e.id),
      this.owner(),
      now,
      new Date(now.getTime() + this.config.leaseMs),
      free,
    );
    // Every free slot filled: more may be due, so a slot that frees up starts the next turn at once.
    const backlog = claimed.length > 0 && claimed.length === free;
    for (const row of claimed) {
      const p: Promise<void> = this.attempt(row)
        .catch((err: unknown) => this.deps.logger.warn({ webhook: row.webhookId, delivery: row.id, err: errSummary(err) }, "webhook attempt could not be recorded; the lease will lapse"))
        .finally(() => {
          this.inflight.delete(p);
          if (backlog) this.wake();
        });
      this.inflight.add(p);
    }
    const t = now.getTime();
    if (endpoints.length > 0 && t - this.lastStats >= STATS_EVERY_MS) {
      this.lastStats = t;
      this.deps.metrics.observeStats(await repo.stats());
    }
    if (t - this.lastSweep >= SWEEP_EVERY_MS) {
      this.lastSweep = t;
      const swept = await repo.sweep(new Date(t - this.config.deliveredRetentionMs), new Date(t - this.config.deadRetentionMs));
      // A webhook removed from the configuration forgets where it was: added again, it starts with the events from then on.
      await repo.dropCursors(endpoints.map((e) => e.id));
      if (swept > 0) this.deps.logger.info({ deliveries: swept }, "swept webhook deliveries");
    }
  }

  private owner(): string {
    return `${this.deps.replicaId}:${randomBytes(4).toString("hex")}`;
  }

  /** Moves one webhook's cursor over the outbox until it is at the head (bounded per turn). */
  private async fanOut(endpoint: WebhookEndpoint, outbox: WebhookOutbox): Promise<void> {
    const { repo, logger } = this.deps;
    let from = await repo.cursorOf(endpoint.id);
    if (from === undefined) {
      await repo.startCursor(endpoint.id, await outbox.head(this.addedAt.get(endpoint.id) ?? this.now()), this.now());
      // Read back: another replica may have started it first. This turn then goes on to fan out what is there.
      from = await repo.cursorOf(endpoint.id);
      if (from === undefined) return;
    }
    for (let i = 0; i < 10; i++) {
      // Only the kinds it takes are read; the cursor moves past the others too.
      const page = await outbox.read(from, FAN_OUT_BATCH, endpoint.events.includes("*") ? undefined : endpoint.events);
      if (page.expired) {
        logger.error({ webhook: endpoint.id, from, to: page.cursor }, "webhook fell behind the events retention (events.retention_seconds): the events in between are not delivered");
      }
      if (page.cursor === from) return;
      const now = this.now();
      const rows = page.events.filter((e) => wants(endpoint, e.type)).map((e) => this.deliveryOf(endpoint, e, now));
      // Another replica moved it first: it made these deliveries; this turn is done with this webhook.
      if (!(await repo.advance(endpoint.id, from, page.cursor, rows, now))) return;
      if (rows.length > 0) logger.debug({ webhook: endpoint.id, deliveries: rows.length }, "webhook deliveries made");
      if (page.events.length < FAN_OUT_BATCH) return;
      from = page.cursor;
    }
  }

  private deliveryOf(endpoint: WebhookEndpoint, e: WebhookEvent, now: Date): WebhookDeliveryRow {
    return {
      id: newDeliveryId(),
      webhookId: endpoint.id,
      eventId: e.cursor,
      eventType: e.type,
      provider: e.provider,
      payload: webhookBody(e.type, e.at, e.data),
      state: "pending",
      attempts: 0,
      createdAt: now,
      eventAt: e.at,
      windowStart: e.at,
      nextAttemptAt: now,
      leaseOwner: null,
      leaseUntil: null,
      lastStatus: null,
      lastError: null,
      deliveredAt: null,
      deadAt: null,
    };
  }

  /** One attempt of a leased delivery, and what it writes: delivered, retried later, or dead. */
  private async attempt(row: WebhookDeliveryRow): Promise<void> {
    const { repo, metrics, logger } = this.deps;
    const owner = row.leaseOwner!;
    const endpoint = this.config.endpoints.find((e) => e.id === row.webhookId);
    if (!endpoint) return; // removed by a reload since the claim: its lease lapses, and nothing picks it up until it is configured again
    const started = this.now();
    const result = await this.deps.send(endpoint, signWebhook(endpoint.secrets, row.id, started, row.payload), row.payload);
    const attempts = row.attempts + 1;
    const at = this.now();
    metrics.attempt(endpoint.id, resultLabel(result.status, result.error));
    const log = { webhook: endpoint.id, delivery: row.id, type: row.eventType, attempts, status: result.status || undefined };
    if (result.error === undefined) {
      if (await repo.finish(row.id, owner, attempts, { state: "delivered", status: result.status, at })) {
        metrics.delivered(endpoint.id, (at.getTime() - new Date(row.eventAt).getTime()) / 1000);
      }
      return;
    }
    const windowEnd = new Date(row.windowStart).getTime() + this.config.maxAgeMs;
    // 410 Gone: the receiver wants no more of these (Standard Webhooks); the rest are retried until the window ends.
    if (result.status === 410 || at.getTime() >= windowEnd) {
      if (await repo.finish(row.id, owner, attempts, { state: "dead", status: result.status || null, error: result.error, at })) {
        metrics.dead(endpoint.id);
        logger.warn({ ...log, error: result.error }, "webhook delivery dead-lettered");
      }
      return;
    }
    const backoff = retryDelayMs(attempts, { baseMs: this.config.retryBaseDelayMs, maxMs: this.config.retryMaxDelayMs }, this.deps.random);
    const delay = Math.min(Math.max(backoff, result.retryAfterMs ?? 0), this.config.retryMaxDelayMs);
    const next = new Date(Math.min(at.getTime() + delay, windowEnd));
    await repo.finish(row.id, owner, attempts, { state: "pending", status: result.status || null, error: result.error, nextAttemptAt: next });
    logger.info({ ...log, error: result.error, nextAttemptAt: next.toISOString() }, "webhook attempt failed; will retry");
  }

  /** Stops the turns and waits for the attempts in flight (each bounded by webhooks.timeout_seconds). */
  async close(): Promise<void> {
    this.stopped = true;
    this.unsubscribe?.();
    if (this.timer) clearTimeout(this.timer);
    await this.running;
    await Promise.allSettled([...this.inflight]);
  }
}
