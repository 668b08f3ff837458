import { createHmac, randomBytes } from "node:crypto";

/** The three Standard Webhooks headers of one attempt. */
export interface SignedHeaders {
  "webhook-id": string;
  "webhook-timestamp": string;
  "webhook-signature": string;
}

/**
 * The headers of one attempt, by the Standard Webhooks specification:
 * `v1,` and the base64 HMAC-SHA256, under a secret's key, of
 * `{id}.{timestamp}.{body}`, the timestamp in whole seconds of the attempt;
 * one signature per key, space-delimited (a secret rotation without downtime).
 */
export function signWebhook(keys: readonly Buffer[], id: string, attemptAt: Date, body: string): SignedHeaders {
  const timestamp = String(Math.floor(attemptAt.getTime() / 1000));
  const signatures = keys.map((key) => `v1,${createHmac("sha256", key).update(`${id}.${timestamp}.`).update(body).digest("base64")}`);
  return { "webhook-id": id, "webhook-timestamp": timestamp, "webhook-signature": signatures.join(" ") };
}

/** A new delivery id: `msg_` and 26 url-safe characters, never a `.` (the signed content is dot-delimited). */
export function newDeliveryId(): string {
  return `msg_${randomBytes(20).toString("base64url").slice(0, 26)}`;
}

/** The body every attempt of a delivery sends: the Standard Webhooks payload shape, minified. */
export function webhookBody(type: string, timestamp: Date, data: Record<string, unknown>): string {
  return JSON.stringify({ type, timestamp: timestamp.toISOString(), data });
}
