import { EventCursorExpiredError } from "../db/event-repository.js";

/** A WatchEvents cursor that is not valid here: older than the retention, or ahead of every event. */
export class CursorOutOfRangeError extends Error {
  override name = "CursorOutOfRangeError";
  constructor(
    /** CURSOR_EXPIRED (events after it were purged) or CURSOR_AHEAD (no such event yet). */
    readonly reason: "CURSOR_EXPIRED" | "CURSOR_AHEAD",
    /** The oldest valid cursor (expired) or the newest event's (ahead). */
    readonly bound: number,
    options?: { cause?: unknown },
  ) {
    super(
      reason === "CURSOR_EXPIRED"
        ? `the cursor is older than the event retention; events after it are gone (oldest valid cursor ${bound})`
        : `the cursor is ahead of the newest event (${bound})`,
      options,
    );
  }
}

/** This replica already serves events.max_watchers streams. */
export class TooManyWatchersError extends Error {
  override name = "TooManyWatchersError";
  constructor(readonly max: number) {
    super(`this replica already serves ${max} event streams; try again later or another replica`);
  }
}

/** The service is shutting down: the stream ends, resume on another replica with the last cursor. */
export class WatchClosingError extends Error {
  override name = "WatchClosingError";
  constructor() {
    super("server is shutting down; resume with the last cursor");
  }
}

/** The database layer's cursor error as the domain's. */
export function asCursorError(err: unknown): never {
  if (err instanceof EventCursorExpiredError) throw new CursorOutOfRangeError("CURSOR_EXPIRED", err.horizon, { cause: err });
  throw err;
}
