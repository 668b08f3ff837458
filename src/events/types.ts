/**
 * What the outbox holds: one change others must hear about (docs/connection-health.md#events).
 * An event names ids, a provider, a user, a reason and a time, and never a token.
 */

/** Every kind of event, as written in the outbox and on the wire. */
export const EVENT_KINDS = [
  "session.created",
  "session.refresh_failing",
  "session.recovered",
  "session.reauth_required",
  "session.revoked",
  "session.logged_out",
  "session.stepped_up",
  "session.reconnected",
  "provider.registered",
  "provider.deleted",
] as const;

export type EventKind = (typeof EVENT_KINDS)[number];

/** Whether a string names an event kind. */
export function isEventKind(s: string): s is EventKind {
  return (EVENT_KINDS as readonly string[]).includes(s);
}

/**
 * Position in the outbox. Cursors grow in commit order: every event committed
 * after another has a greater cursor, so "everything after cursor c" read
 * again later never misses an event that committed in between. Gaps are
 * normal (a rolled-back transaction used a number). 0 is before every event.
 */
export type EventCursor = number;

/** An event about to be appended (inside the transaction of the change that causes it). */
export interface NewEvent {
  kind: EventKind;
  provider: string | null;
  userId: string | null;
  /** The stored session id (as ListSessions shows it), for session.* kinds. */
  sessionId: string | null;
  /** A machine code: the error class, the provider's error code, or what ended the session. Never upstream text. */
  reason: string | null;
  /** Small non-secret facts (numbers, codes, ISO times), e.g. { failures: 1 }. */
  detail?: Record<string, string | number | boolean> | null;
}

/** An event as committed. */
export interface StoredEvent extends Omit<NewEvent, "detail"> {
  /** Unique, random, stable across reads and replicas ("evt_…"): the id a webhook receiver deduplicates on. */
  id: string;
  cursor: EventCursor;
  detail: Record<string, string | number | boolean> | null;
  createdAt: Date;
}

/** Which events a reader wants; every field narrows (an empty list or undefined: no restriction). */
export interface EventFilter {
  kinds?: readonly EventKind[];
  /** Only events of these providers (a caller's allowed providers); events without a provider are excluded when set. */
  providers?: readonly string[];
  /** Only events of this user; events without a user are excluded when set. */
  userId?: string;
}
