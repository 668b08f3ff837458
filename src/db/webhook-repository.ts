import type { EntityManager, FilterQuery, MikroORM } from "@mikro-orm/core";
import type { SqlEntityManager } from "@mikro-orm/knex";
import { runOn } from "./session-repository.js";
import { WebhookCursorSchema, WebhookDeliverySchema, type DeliveryState, type WebhookDeliveryRow } from "./webhook-entity.js";

export type { DeliveryState, WebhookDeliveryRow } from "./webhook-entity.js";

/** What one attempt's end writes: delivered, retried later, or dead. */
export type AttemptOutcome =
  | { state: "delivered"; status: number; at: Date }
  | { state: "pending"; status: number | null; error: string; nextAttemptAt: Date }
  | { state: "dead"; status: number | null; error: string; at: Date };

/** Another replica moved the cursor first: this fan-out's transaction is rolled back. */
class CursorMoved extends Error {
  override name = "CursorMoved";
}

/** Pending, due, for one of `webhookIds`, and no live lease on it. */
function claimable(webhookIds: string[], now: Date): FilterQuery<WebhookDeliveryRow> {
  return { state: "pending", webhookId: { $in: webhookIds }, nextAttemptAt: { $lte: now }, $or: [{ leaseUntil: null }, { leaseUntil: { $lt: now } }] };
}

/**
 * All SQL about webhook deliveries. Each webhook reads the outbox through
 * its cursor, and the cursor moves in the transaction that inserts the
 * deliveries it read (a compare-and-set on the old position), so a fan-out
 * neither loses nor repeats an event, whichever replica runs it. An attempt
 * is made under a lease taken by a conditional update, as the refresh lease.
 */
export class WebhookRepository {
  constructor(private readonly orm: MikroORM) {}

  private run<T>(fn: (em: EntityManager) => Promise<T>): Promise<T> {
    return runOn(this.orm, fn);
  }

  /** Where a webhook's cursor is over the outbox; undefined before its first fan-out. */
  async cursorOf(webhookId: string): Promise<string | undefined> {
    return this.run(async (em) => (await em.findOne(WebhookCursorSchema, { webhookId }, { disableIdentityMap: true }))?.position);
  }

  /** Sets a new webhook's cursor (unless another replica did first): it gets the events after `position`. */
  async startCursor(webhookId: string, position: string, now: Date): Promise<void> {
    await this.run((em) =>
      (em as SqlEntityManager).createQueryBuilder(WebhookCursorSchema).insert({ webhookId, position, updatedAt: now }).onConflict("webhookId").ignore().execute(),
    );
  }

  /**
   * One step of a webhook's fan-out: inserts the deliveries made of the
   * events between `from` and `to`, and moves the cursor from `from` to `to`,
   * in one transaction; a compare-and-set on `from`, so when another replica
   * moved it first, nothing is inserted. Returns whether it moved.
   */
  async advance(webhookId: string, from: string, to: string, rows: WebhookDeliveryRow[], now: Date): Promise<boolean> {
    try {
      return await this.run((em) =>
        em.transactional(async (tx) => {
          const moved = await tx.nativeUpdate(WebhookCursorSchema, { webhookId, position: from }, { position: to, updatedAt: now });
          if (moved !== 1) throw new CursorMoved();
          // A delivery already made of the same event (a cursor started again after a rolling reload dropped it) is kept as it is.
          if (rows.length > 0) {
            await (tx as SqlEntityManager).createQueryBuilder(WebhookDeliverySchema).insert(rows).onConflict(["webhookId", "eventId"]).ignore().execute();
          }
          return true;
        }),
      );
    } catch (err) {
      if (err instanceof CursorMoved) return false;
      throw err;
    }
  }

  /** Forgets the cursors of webhooks no longer configured (their deliveries stay, for the list and retries). */
  async dropCursors(keep: string[]): Promise<void> {
    await this.run((em) => em.nativeDelete(WebhookCursorSchema, keep.length > 0 ? { webhookId: { $nin: keep } } : {}));
  }

  /**
   * Takes the lease on up to `limit` due deliveries of these webhooks, each
   * by a conditional update (pending, due, no live lease: a lapsed one is
   * taken over), so one replica at a time attempts a delivery.
   */
  async claim(webhookIds: string[], owner: string, now: Date, until: Date, limit: number): Promise<WebhookDeliveryRow[]> {
    if (webhookIds.length === 0 || limit <= 0) return [];
    return this.run(async (em) => {
      const due = await em.find(WebhookDeliverySchema, claimable(webhookIds, now), {
        fields: ["id"],
        orderBy: { nextAttemptAt: "asc" },
        limit,
        disableIdentityMap: true,
      });
      const taken: WebhookDeliveryRow[] = [];
      for (const { id } of due) {
        const rows = await (em as SqlEntityManager)
          .createQueryBuilder(WebhookDeliverySchema)
          .update({ leaseOwner: owner, leaseUntil: until })
          .where({ id, ...(claimable(webhookIds, now) as object) })
          .returning("*")
          .execute<WebhookDeliveryRow[]>("all", true);
        if (rows[0]) taken.push(rows[0]);
      }
      return taken;
    });
  }

  /** Writes how an attempt ended, if `owner` still holds the delivery's lease. */
  async finish(id: string, owner: string, attempts: number, outcome: AttemptOutcome): Promise<boolean> {
    const common = { attempts, leaseOwner: null, leaseUntil: null, lastStatus: outcome.status };
    const fields =
      outcome.state === "delivered"
        ? { ...common, state: outcome.state, deliveredAt: outcome.at, lastError: null }
        : outcome.state === "dead"
          ? { ...common, state: outcome.state, deadAt: outcome.at, lastError: outcome.error }
          : { ...common, nextAttemptAt: outcome.nextAttemptAt, lastError: outcome.error };
    return this.run(async (em) => (await em.nativeUpdate(WebhookDeliverySchema, { id, leaseOwner: owner, state: "pending" }, fields)) === 1);
  }

  async findById(id: string): Promise<WebhookDeliveryRow | null> {
    return this.run((em) => em.findOne(WebhookDeliverySchema, { id }, { disableIdentityMap: true }));
  }

  /** Deliveries, newest first, without their payloads. */
  async list(filter: { webhookId?: string; state?: DeliveryState; providers?: string[] }, limit: number): Promise<Array<Omit<WebhookDeliveryRow, "payload">>> {
    const where: FilterQuery<WebhookDeliveryRow> = {
      ...(filter.webhookId ? { webhookId: filter.webhookId } : {}),
      ...(filter.state ? { state: filter.state } : {}),
      ...(filter.providers ? { provider: { $in: filter.providers } } : {}),
    };
    return this.run((em) =>
      em.find(WebhookDeliverySchema, where, { exclude: ["payload"], orderBy: { createdAt: "desc", id: "asc" }, limit, disableIdentityMap: true }),
    ) as Promise<Array<Omit<WebhookDeliveryRow, "payload">>>;
  }

  /**
   * Makes a delivery pending and due now, with a new retry window from now
   * (a dead letter retried by hand, or any delivery sent again): the same id,
   * so the same webhook-id. Returns the row, or null when there is none.
   */
  async retry(id: string, now: Date): Promise<WebhookDeliveryRow | null> {
    return this.run(async (em) => {
      await em.nativeUpdate(WebhookDeliverySchema, { id }, { state: "pending", nextAttemptAt: now, windowStart: now, deadAt: null, deliveredAt: null });
      return em.findOne(WebhookDeliverySchema, { id }, { disableIdentityMap: true });
    });
  }

  /** Per webhook: the event time of its oldest pending delivery, and its dead letters (cluster-wide). */
  async stats(): Promise<{ oldestPending: Map<string, Date>; dead: Map<string, number> }> {
    return this.run(async (em) => {
      const knex = (em as SqlEntityManager).getKnex();
      const pending = (await knex("webhook_deliveries").where("state", "pending").groupBy("webhook_id").select("webhook_id").min({ oldest: "event_at" })) as Array<{
        webhook_id: string;
        oldest: Date | string | number;
      }>;
      const dead = (await knex("webhook_deliveries").where("state", "dead").groupBy("webhook_id").select("webhook_id").count({ n: "*" })) as Array<{
        webhook_id: string;
        n: number | string;
      }>;
      return {
        oldestPending: new Map(pending.map((r) => [r.webhook_id, new Date(typeof r.oldest === "string" && /^\d+$/.test(r.oldest) ? Number(r.oldest) : r.oldest)])),
        dead: new Map(dead.map((r) => [r.webhook_id, Number(r.n)])),
      };
    });
  }

  /** Deletes delivered rows delivered before `deliveredBefore` and dead letters dead before `deadBefore`; returns how many. */
  async sweep(deliveredBefore: Date, deadBefore: Date): Promise<number> {
    return this.run(
      async (em) =>
        (await em.nativeDelete(WebhookDeliverySchema, { state: "delivered", deliveredAt: { $lt: deliveredBefore } })) +
        (await em.nativeDelete(WebhookDeliverySchema, { state: "dead", deadAt: { $lt: deadBefore } })),
    );
  }
}
