import { randomBytes } from "node:crypto";
import type { Config } from "../config.js";
import type { Store } from "../db/create-store.js";
import { WebhookRepository } from "../db/webhook-repository.js";
import type { Logger } from "../logger.js";
import type { Metrics } from "../metrics.js";
import type { OutboundPolicy } from "../providers/outbound-policy.js";
import { WebhookDeliveries } from "./deliveries.js";
import { WebhookDispatcher, type WebhookOutbox } from "./dispatcher.js";
import { WebhookMetrics } from "./metrics.js";
import { createSender } from "./sender.js";

/** Signed webhooks: the dispatcher every replica runs, and the deliveries' list and manual retry. */
export interface Webhooks {
  readonly dispatcher: WebhookDispatcher;
  readonly deliveries: WebhookDeliveries;
  /** Starts the dispatcher's turns. */
  start(): void;
  /** Stops them and waits for the attempts in flight (each bounded by webhooks.timeout_seconds). */
  close(): Promise<void>;
}

/**
 * The webhooks of the configuration over the store and the outbound policy
 * of runtime providers (a reload updates both, through the reloader).
 */
export function createWebhooks(
  config: Config,
  deps: { store: Store; outbound: OutboundPolicy; outbox: WebhookOutbox | undefined; metrics: Metrics; logger: Logger; replicaId: string | undefined },
): Webhooks {
  const repo = new WebhookRepository(deps.store.orm);
  // The timeout is read per attempt: a reload changes it.
  const send = createSender({ policy: deps.outbound, logger: deps.logger, timeoutMs: () => d.settings.timeoutMs });
  const d: WebhookDispatcher = new WebhookDispatcher(config.webhooks, {
    repo,
    outbox: deps.outbox,
    send,
    metrics: new WebhookMetrics(deps.metrics.registry),
    logger: deps.logger,
    replicaId: deps.replicaId ?? `${process.pid}-${randomBytes(4).toString("hex")}`,
  });
  return {
    dispatcher: d,
    deliveries: new WebhookDeliveries(repo, deps.logger),
    start: () => d.start(),
    close: () => d.close(),
  };
}
