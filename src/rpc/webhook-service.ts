import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  ListWebhookDeliveriesResponseSchema,
  RetryWebhookDeliveryResponseSchema,
  WebhookDeliverySchema,
  WebhookDeliveryState,
  type WebhookDelivery,
  type WebhookService,
} from "../../gen/tokenservice/v1/token_service_pb.js";
import type { DeliveryState } from "../db/webhook-repository.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import type { DeliveryView, WebhookDeliveries } from "../webhooks/deliveries.js";
import type { ServiceHandlers } from "./handlers.js";

const STATES: Record<DeliveryState, WebhookDeliveryState> = {
  pending: WebhookDeliveryState.PENDING,
  delivered: WebhookDeliveryState.DELIVERED,
  dead: WebhookDeliveryState.DEAD,
};

function stateOf(state: WebhookDeliveryState): DeliveryState | undefined {
  if (state === WebhookDeliveryState.UNSPECIFIED) return undefined;
  const found = (Object.keys(STATES) as DeliveryState[]).find((k) => STATES[k] === state);
  if (!found) throw new InvalidArgumentError("state", "is not a known WebhookDeliveryState");
  return found;
}

const ts = (d: Date | null) => (d ? timestampFromDate(new Date(d)) : undefined);

function toProto(d: DeliveryView): WebhookDelivery {
  return create(WebhookDeliverySchema, {
    id: d.id,
    webhookId: d.webhookId,
    eventType: d.eventType,
    eventId: d.eventId,
    provider: d.provider ?? "",
    state: STATES[d.state],
    attempts: d.attempts,
    createdAt: ts(d.createdAt),
    nextAttemptAt: d.state === "pending" ? ts(d.nextAttemptAt) : undefined,
    lastStatus: d.lastStatus ?? 0,
    lastError: d.lastError ?? "",
    deliveredAt: ts(d.deliveredAt),
    deadAt: ts(d.deadAt),
  });
}

/** The WebhookService RPCs: proto in, domain call, proto out. */
export function createWebhookServiceHandlers(deliveries: WebhookDeliveries): ServiceHandlers<typeof WebhookService> {
  return {
    async listWebhookDeliveries(req, ctx) {
      const list = await deliveries.list({ webhookId: req.webhookId || undefined, state: stateOf(req.state), limit: req.limit }, ctx);
      return create(ListWebhookDeliveriesResponseSchema, { deliveries: list.map(toProto) });
    },
    async retryWebhookDelivery(req, ctx) {
      return create(RetryWebhookDeliveryResponseSchema, { delivery: toProto(await deliveries.retry(req.id, ctx)) });
    },
  };
}
