import { EntitySchema } from "@mikro-orm/core";

/** Where a delivery is: waiting for an attempt, answered with a 2xx, or given up. */
export type DeliveryState = "pending" | "delivered" | "dead";

/**
 * One event to send to one webhook. `id` is the webhook-id of every attempt;
 * `payload` is the exact body, fixed when the delivery was made, so every
 * attempt sends (and signs) the same bytes. No token or secret is in it.
 */
export interface WebhookDeliveryRow {
  id: string;
  webhookId: string;
  /** The event's cursor in the outbox (opaque). */
  eventId: string;
  eventType: string;
  provider: string | null;
  payload: string;
  state: DeliveryState;
  attempts: number;
  createdAt: Date;
  /** When the event happened. */
  eventAt: Date;
  /** Retries go on until this plus webhooks.max_age_seconds: the event's time, or a manual retry's. */
  windowStart: Date;
  nextAttemptAt: Date;
  leaseOwner: string | null;
  leaseUntil: Date | null;
  lastStatus: number | null;
  lastError: string | null;
  deliveredAt: Date | null;
  deadAt: Date | null;
}

export const WebhookDeliverySchema = new EntitySchema<WebhookDeliveryRow>({
  name: "WebhookDelivery",
  tableName: "webhook_deliveries",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    webhookId: { type: "string", length: 64 },
    eventId: { type: "string", length: 64 },
    eventType: { type: "string", length: 64 },
    provider: { type: "string", length: 64, nullable: true },
    payload: { type: "text" },
    state: { type: "string", length: 16 },
    attempts: { type: "integer" },
    createdAt: { type: "datetime", length: 3 },
    eventAt: { type: "datetime", length: 3 },
    windowStart: { type: "datetime", length: 3 },
    nextAttemptAt: { type: "datetime", length: 3 },
    leaseOwner: { type: "string", length: 128, nullable: true },
    leaseUntil: { type: "datetime", length: 3, nullable: true },
    lastStatus: { type: "integer", nullable: true },
    lastError: { type: "string", length: 64, nullable: true },
    deliveredAt: { type: "datetime", length: 3, nullable: true },
    deadAt: { type: "datetime", length: 3, nullable: true },
  },
  uniques: [{ name: "webhook_deliveries_event_unique", properties: ["webhookId", "eventId"] }],
  indexes: [{ name: "webhook_deliveries_due_idx", properties: ["state", "nextAttemptAt"] }],
});

/** How far a webhook has read the outbox: moved in the transaction that inserts the deliveries it read. */
export interface WebhookCursorRow {
  webhookId: string;
  /** The outbox cursor of the last event read (opaque). */
  position: string;
  updatedAt: Date;
}

export const WebhookCursorSchema = new EntitySchema<WebhookCursorRow>({
  name: "WebhookCursor",
  tableName: "webhook_cursors",
  properties: {
    webhookId: { type: "string", primary: true, length: 64 },
    position: { type: "string", length: 64 },
    updatedAt: { type: "datetime", length: 3 },
  },
});
