import type { Writable } from "node:stream";
import { pino } from "pino";
import { ConfigError, loadConfig } from "../config.js";
import { WebhookRepository } from "../db/webhook-repository.js";
import { createLogger } from "../logger.js";
import { InvalidArgumentError } from "../sessions/errors.js";
import { WebhookDeliveries, WebhookDeliveryNotFoundError, type DeliveryView } from "../webhooks/deliveries.js";
import { option } from "./args.js";
import { openStore } from "./store.js";

const iso = (d: Date | null) => (d ? new Date(d).toISOString().replace(/\.\d{3}Z$/, "Z") : "-");

function table(rows: DeliveryView[], out: Writable): void {
  const header = ["DELIVERY", "WEBHOOK", "TYPE", "STATE", "ATTEMPTS", "LAST", "CREATED", "NEXT / DONE"];
  const lines = rows.map((d) => [
    d.id,
    d.webhookId,
    d.eventType,
    d.state,
    String(d.attempts),
    d.lastError ?? (d.lastStatus ? String(d.lastStatus) : "-"),
    iso(d.createdAt),
    iso(d.state === "pending" ? d.nextAttemptAt : d.state === "dead" ? d.deadAt : d.deliveredAt),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
  for (const l of [header, ...lines]) out.write(`${l.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
}

/**
 * `webhooks deliveries [--webhook ID] [--dead | --pending | --delivered] [--limit N]`:
 * deliveries, newest first, without payloads; `webhooks retry --id MSG_ID`:
 * sends one again now (a running replica picks it up), with the same
 * webhook-id, as RetryWebhookDelivery.
 */
export async function webhooksCommand(args: string[], env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  const sub = args[0];
  if (sub !== "deliveries" && sub !== "retry") throw new ConfigError(`webhooks: unknown subcommand "${sub ?? ""}" (use deliveries or retry)`);
  const states = (["dead", "pending", "delivered"] as const).filter((s) => args.includes(`--${s}`));
  if (states.length > 1) throw new ConfigError("webhooks deliveries: give at most one of --dead, --pending, --delivered");
  const limitText = option(args, "--limit");
  const limit = limitText === undefined ? undefined : Number(limitText);
  if (limit !== undefined && !(Number.isInteger(limit) && limit > 0)) throw new ConfigError("webhooks deliveries: --limit must be a positive integer");
  const id = sub === "retry" ? option(args, "--id") : undefined;
  if (sub === "retry" && !id) throw new ConfigError("webhooks retry: --id is required");
  const store = await openStore(loadConfig(env));
  const deliveries = new WebhookDeliveries(new WebhookRepository(store.orm), createLogger("warn", pino.destination({ dest: 2, sync: true })));
  try {
    if (sub === "retry") {
      const d = await deliveries.retry(id!, { caller: "cli" });
      out.write(`retrying ${d.id} (webhook ${d.webhookId}, ${d.eventType}): due now\n`);
      return 0;
    }
    const rows = await deliveries.list({ webhookId: option(args, "--webhook"), state: states[0], limit });
    if (rows.length === 0) {
      out.write(`no ${states[0] ?? ""}${states[0] ? " " : ""}deliveries\n`);
      return 0;
    }
    table(rows, out);
    out.write(`${rows.length} deliver${rows.length === 1 ? "y" : "ies"}\n`);
    return 0;
  } catch (err) {
    if (err instanceof InvalidArgumentError || err instanceof WebhookDeliveryNotFoundError) throw new ConfigError(`webhooks ${sub}: ${err.message}`);
    throw err;
  } finally {
    await store.close();
  }
}
