import type { FilterQuery, MikroORM } from "@mikro-orm/core";
import { AudienceTokenSchema, type AudienceTokenRow } from "./provider-entity.js";
import { asBuffer, SessionSchema, type SessionRow } from "./session-entity.js";
import { runOn } from "./session-repository.js";
import { EventRepository } from "./event-repository.js";
import { sessionEvent, tokensWritten, type RefreshedFields } from "./session-repository.js";

/** What a step-up writes over a session: the new token set, as a refresh writes it, and who the ID token names. */
export type ReplacedFields = RefreshedFields & Pick<SessionRow, "subject" | "sid" | "resources">;

/** Tries of the step-up counter's compare-and-set before it gives up (other replicas counting at once). */
const COUNT_TRIES = 5;

/**
 * The SQL of step-ups: counting them per session (a sliding hour, in the
 * session row, so every replica sees one count), and replacing a session's
 * tokens in place.
 */
export class StepUpRepository {
  constructor(
    private readonly orm: MikroORM,
    /** session.stepped_up is appended in the step-up's transaction. */
    private readonly events: EventRepository = new EventRepository(orm),
  ) {}

  /**
   * Counts a step-up of the session at `now` unless `max` were counted in
   * the `windowMs` before: "ok", "limit", or "gone" (no such session). A
   * compare-and-set on the column itself, which no refresh writes, so a
   * refresh in flight keeps its version.
   */
  async count(id: string, userId: string, now: Date, windowMs: number, max: number): Promise<"ok" | "limit" | "gone"> {
    return runOn(this.orm, async (em) => {
      for (let i = 0; i < COUNT_TRIES; i++) {
        const row = await em.findOne(SessionSchema, { id, userId }, { fields: ["id", "stepUps"], disableIdentityMap: true });
        if (!row) return "gone";
        const old = row.stepUps ?? null;
        const recent = parseTimes(old).filter((t) => t > now.getTime() - windowMs);
        if (recent.length >= max) return "limit";
        const where: FilterQuery<SessionRow> = { id, userId, stepUps: old };
        if ((await em.nativeUpdate(SessionSchema, where, { stepUps: JSON.stringify([...recent, now.getTime()]) })) === 1) return "ok";
      }
      return "limit";
    });
  }

  /**
   * Writes a step-up's tokens over the session, in one transaction with
   * deleting its audience tokens (they carry the old scopes), when the row
   * is still at `version` and no replica holds a live refresh lease on it.
   * The session is active afterwards (a REAUTH_REQUIRED one is revived) and
   * its version moves, so a refresh that leased it before cannot store.
   * Returns the audience tokens deleted, or null when the row moved. The
   * same transaction appends session.stepped_up, or session.reconnected when
   * a session that needed a new login was revived in place.
   */
  async replace(id: string, userId: string, version: number, fields: ReplacedFields, now: Date): Promise<AudienceTokenRow[] | null> {
    return this.events.transactional(async (tx) => {
      const where: FilterQuery<SessionRow> = { id, userId, version, $or: [{ leaseUntil: null }, { leaseUntil: { $lt: now } }] };
      const before = await tx.findOne(SessionSchema, where, { fields: ["id", "userId", "provider", "status"], disableIdentityMap: true });
      const set = { ...fields, status: "active" as const, reauthReason: null, reauthAt: null, ...tokensWritten(version, now) };
      if (!before || (await tx.nativeUpdate(SessionSchema, where, set)) !== 1) return { result: null, events: [] };
      const audience = await tx.find(AudienceTokenSchema, { sessionId: id }, { disableIdentityMap: true });
      if (audience.length > 0) await tx.nativeDelete(AudienceTokenSchema, { sessionId: id });
      // A session that needed a new login and got one in place is reconnected; an active one is stepped up.
      const kind = before.status === "active" ? "session.stepped_up" : "session.reconnected";
      return {
        result: audience.map((a) => ({ ...a, accessCt: asBuffer(a.accessCt) as Buffer })),
        events: [sessionEvent(kind, before, null)],
      };
    });
  }
}

/** The counter column's epoch milliseconds; a value that does not parse counts as none. */
function parseTimes(json: string | null): number[] {
  if (!json) return [];
  try {
    const list: unknown = JSON.parse(json);
    return Array.isArray(list) ? list.filter((t): t is number => typeof t === "number" && Number.isFinite(t)) : [];
  } catch {
    return [];
  }
}
