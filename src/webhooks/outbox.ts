import { EventCursorExpiredError, type EventRepository } from "../db/event-repository.js";
import { isEventKind, type EventKind, type StoredEvent } from "../events/types.js";
import type { EventWake } from "../events/wake.js";
import { sessionRef } from "../logger.js";
import type { WebhookEvent, WebhookOutbox } from "./dispatcher.js";

/**
 * An outbox event as webhooks send it: ids, the provider, the user, the
 * reason and the time. The session appears as its short reference (the
 * same `sessionRef` the logs use: the first 12 characters of the base64url
 * SHA-256 of the id), never as the id itself, which is a handle to tokens.
 */
export function webhookEventOf(e: StoredEvent): WebhookEvent {
  return {
    cursor: String(e.cursor),
    type: e.kind,
    provider: e.provider,
    at: new Date(e.createdAt),
    data: {
      event_id: e.id,
      cursor: String(e.cursor),
      provider: e.provider,
      user_id: e.userId,
      session_ref: e.sessionId ? sessionRef(e.sessionId) : null,
      reason: e.reason,
      ...(e.detail ? { detail: e.detail } : {}),
    },
  };
}

/** The events outbox (src/db/event-repository.ts) as the webhook fan-out reads it, woken by EventWake. */
export function eventsOutbox(events: EventRepository, wake: EventWake | undefined): WebhookOutbox {
  return {
    head: async (since) => String(await events.cursorSince(since)),
    async read(cursor, limit, kinds) {
      try {
        const page = await events.readAfter(Number(cursor), kinds ? { kinds: kinds.filter((k): k is EventKind => isEventKind(k)) } : {}, limit);
        return { events: page.events.map(webhookEventOf), cursor: String(page.next) };
      } catch (err) {
        if (!(err instanceof EventCursorExpiredError)) throw err;
        return { events: [], cursor: String(err.horizon), expired: true };
      }
    },
    ...(wake ? { subscribe: (listener: () => void) => wake.subscribe(listener) } : {}),
  };
}
