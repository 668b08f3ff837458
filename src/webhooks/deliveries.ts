import { DatabaseUnavailableError } from "../db/session-repository.js";
import type { DeliveryState, WebhookDeliveryRow, WebhookRepository } from "../db/webhook-repository.js";
import type { Logger } from "../logger.js";
import { InvalidArgumentError, StoreUnavailableError } from "../sessions/errors.js";
import type { CallContext } from "../sessions/scope.js";

/** A delivery as ListWebhookDeliveries and the CLI show it: no payload. */
export type DeliveryView = Omit<WebhookDeliveryRow, "payload" | "leaseOwner" | "leaseUntil">;

/** No such delivery, or one of a provider the caller may not see: the same answer. */
export class WebhookDeliveryNotFoundError extends Error {
  override name = "WebhookDeliveryNotFoundError";
  readonly code = "WEBHOOK_DELIVERY_NOT_FOUND";
  constructor() {
    super("webhook delivery not found");
  }
}

export const DELIVERY_LIST_LIMIT = 500;
const ID = /^msg_[A-Za-z0-9_-]{1,60}$/;

function view(row: Omit<WebhookDeliveryRow, "payload">): DeliveryView {
  const { leaseOwner: _o, leaseUntil: _u, ...rest } = row;
  return rest;
}

async function guarded<T>(fn: () => Promise<T>): Promise<T> {
  try {
    return await fn();
  } catch (err) {
    if (err instanceof DatabaseUnavailableError) throw new StoreUnavailableError({ cause: err });
    throw err;
  }
}

/**
 * Listing deliveries and sending one again by hand: the domain of
 * WebhookService and the `webhooks` CLI. A caller restricted to some
 * providers sees only deliveries of their events.
 */
export class WebhookDeliveries {
  constructor(
    private readonly repo: WebhookRepository,
    private readonly logger: Logger,
  ) {}

  async list(filter: { webhookId?: string; state?: DeliveryState; limit?: number }, ctx: CallContext = {}): Promise<DeliveryView[]> {
    if (filter.webhookId !== undefined && !/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/.test(filter.webhookId)) {
      throw new InvalidArgumentError("webhook_id", "is not a webhook id");
    }
    const limit = Math.min(filter.limit || DELIVERY_LIST_LIMIT, DELIVERY_LIST_LIMIT);
    const providers = ctx.providers ? [...ctx.providers] : undefined;
    const rows = await guarded(() => this.repo.list({ webhookId: filter.webhookId, state: filter.state, providers }, limit));
    return rows.map(view);
  }

  /** Sends a delivery again now (same id, same body), with a new retry window. */
  async retry(id: string, ctx: CallContext = {}): Promise<DeliveryView> {
    if (!ID.test(id)) throw new InvalidArgumentError("id", "is not a webhook delivery id (msg_…)");
    const existing = await guarded(() => this.repo.findById(id));
    if (!existing || (ctx.providers && (existing.provider === null || !ctx.providers.has(existing.provider)))) throw new WebhookDeliveryNotFoundError();
    const row = await guarded(() => this.repo.retry(id, new Date()));
    if (!row) throw new WebhookDeliveryNotFoundError();
    this.logger.info({ audit: true, event: "webhook_retry", caller: ctx.caller, webhook: row.webhookId, delivery: id, was: existing.state }, "webhook delivery retried by hand");
    const { payload: _p, ...rest } = row;
    return view(rest);
  }
}
