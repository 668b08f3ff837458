import { Counter, Gauge, Histogram, type Registry } from "prom-client";

/** What an attempt's result label can be: a 2xx, the other answers by class, or no answer. */
export const ATTEMPT_RESULTS = ["success", "http_3xx", "http_4xx", "http_5xx", "timeout", "connection", "destination_not_allowed"] as const;

/** Where the cluster-wide gauges come from: the dispatcher's last read of the deliveries table. */
export interface DeliveryStats {
  /** Per webhook, the event time of its oldest pending delivery. */
  oldestPending: Map<string, Date>;
  /** Per webhook, its dead letters. */
  dead: Map<string, number>;
}

/**
 * The webhook metrics, in the service's registry. Labels are webhook ids
 * (from the operator's YAML) and outcomes: never a URL, a payload, a
 * delivery id or a secret.
 */
export class WebhookMetrics {
  private readonly attempts: Counter<"webhook" | "result">;
  private readonly deliveries: Counter<"webhook" | "result">;
  private readonly lag: Histogram<"webhook">;
  private stats: DeliveryStats = { oldestPending: new Map(), dead: new Map() };
  private known = new Set<string>();

  constructor(registry: Registry) {
    const registers = [registry];
    this.attempts = new Counter({
      name: "token_service_webhook_attempts_total",
      help: "Webhook delivery attempts by this replica, by webhook and result (success, http_3xx, http_4xx, http_5xx, timeout, connection, destination_not_allowed).",
      labelNames: ["webhook", "result"],
      registers,
    });
    this.deliveries = new Counter({
      name: "token_service_webhook_deliveries_total",
      help: "Webhook deliveries finished by this replica, by webhook and result (delivered: a 2xx answer; dead: dead-lettered after webhooks.max_age_seconds or a 410).",
      labelNames: ["webhook", "result"],
      registers,
    });
    this.lag = new Histogram({
      name: "token_service_webhook_delivery_lag_seconds",
      help: "Time from an event to its delivery's 2xx answer, by webhook.",
      labelNames: ["webhook"],
      buckets: [0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600, 21_600, 86_400],
      registers,
    });
    const known = () => this.known;
    const stats = () => this.stats;
    new Gauge({
      name: "token_service_webhook_oldest_pending_seconds",
      help: "Age of the oldest undelivered (pending) event per webhook, cluster-wide (every replica reports the same); 0 when none is pending.",
      labelNames: ["webhook"],
      registers,
      collect() {
        this.reset();
        const now = Date.now();
        for (const webhook of known()) {
          const oldest = stats().oldestPending.get(webhook);
          this.set({ webhook }, oldest ? Math.max(0, (now - oldest.getTime()) / 1000) : 0);
        }
      },
    });
    new Gauge({
      name: "token_service_webhook_dead_letters",
      help: "Dead-lettered webhook deliveries waiting in the database per webhook, cluster-wide (every replica reports the same); RetryWebhookDelivery sends one again.",
      labelNames: ["webhook"],
      registers,
      collect() {
        this.reset();
        for (const webhook of known()) this.set({ webhook }, stats().dead.get(webhook) ?? 0);
      },
    });
  }

  /** The configured webhooks: each has its series from the start (counters at 0), so rules and panels see them before any event. */
  configured(ids: string[]): void {
    this.known = new Set(ids);
    for (const webhook of ids) {
      for (const result of ATTEMPT_RESULTS) this.attempts.inc({ webhook, result }, 0);
      for (const result of ["delivered", "dead"]) this.deliveries.inc({ webhook, result }, 0);
      this.lag.zero({ webhook });
    }
  }

  observeStats(stats: DeliveryStats): void {
    this.stats = stats;
  }

  attempt(webhook: string, result: string): void {
    this.attempts.inc({ webhook, result });
  }

  delivered(webhook: string, lagSeconds: number): void {
    this.deliveries.inc({ webhook, result: "delivered" });
    this.lag.observe({ webhook }, lagSeconds);
  }

  dead(webhook: string): void {
    this.deliveries.inc({ webhook, result: "dead" });
  }
}
