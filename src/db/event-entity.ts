import { EntitySchema } from "@mikro-orm/core";

/** One outbox row (src/events/types.ts StoredEvent; `seq` is the cursor). */
export interface EventRow {
  seq: string | number;
  id: string;
  kind: string;
  provider: string | null;
  userId: string | null;
  sessionId: string | null;
  reason: string | null;
  /** JSON object of non-secret facts, or null. */
  detail: string | null;
  createdAt: Date;
}

export const EventSchema = new EntitySchema<EventRow>({
  name: "Event",
  tableName: "events",
  properties: {
    seq: { type: "bigint", primary: true, autoincrement: true },
    id: { type: "string", length: 40, unique: "events_id_unique" },
    kind: { type: "string", length: 48 },
    provider: { type: "string", length: 64, nullable: true },
    userId: { type: "string", length: 256, nullable: true },
    sessionId: { type: "string", length: 64, nullable: true },
    reason: { type: "string", length: 64, nullable: true },
    detail: { type: "text", nullable: true },
    createdAt: { type: "datetime", length: 3 },
  },
  indexes: [{ name: "events_created_idx", properties: ["createdAt"] }],
});

/** The highest cursor purged so far (one row, id 1): a cursor below it may have missed events. */
export interface EventHorizonRow {
  id: number;
  throughSeq: string | number;
}

export const EventHorizonSchema = new EntitySchema<EventHorizonRow>({
  name: "EventHorizon",
  tableName: "event_horizon",
  properties: {
    id: { type: "integer", primary: true, autoincrement: false },
    throughSeq: { type: "bigint" },
  },
});

/** How a session ended, kept as metadata (never a token) for `sessions.ended_retention_seconds`. */
export type EndedStatus = "revoked" | "logged_out";

/** A session that ended (revoked or logged out), without any token. */
export interface EndedSessionRow {
  id: string;
  userId: string;
  provider: string;
  status: EndedStatus;
  /** What ended it: revoke_session, revoke_user_sessions, provider_deleted, backchannel_logout. */
  reason: string;
  scope: string;
  resources: string | null;
  createdAt: Date;
  lastUsedAt: Date;
  endedAt: Date;
}

export const EndedSessionSchema = new EntitySchema<EndedSessionRow>({
  name: "EndedSession",
  tableName: "ended_sessions",
  properties: {
    id: { type: "string", primary: true, length: 64 },
    userId: { type: "string", length: 256 },
    provider: { type: "string", length: 64 },
    status: { type: "string", length: 16 },
    reason: { type: "string", length: 64 },
    scope: { type: "text" },
    resources: { type: "text", nullable: true },
    createdAt: { type: "datetime", length: 3 },
    lastUsedAt: { type: "datetime", length: 3 },
    endedAt: { type: "datetime", length: 3 },
  },
  indexes: [
    { name: "ended_sessions_user_provider_idx", properties: ["userId", "provider", "endedAt"] },
    { name: "ended_sessions_ended_idx", properties: ["endedAt"] },
  ],
});
