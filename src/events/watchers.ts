import type { EventsConfig } from "../config.js";
import type { EventRepository } from "../db/event-repository.js";
import { InvalidArgumentError, UserNotBoundError } from "../sessions/errors.js";
import { providersInScope, type CallContext } from "../sessions/scope.js";
import { asDomainError } from "../sessions/store-errors.js";
import { asCursorError, CursorOutOfRangeError, TooManyWatchersError, WatchClosingError } from "./errors.js";
import { isEventKind, type EventCursor, type EventFilter, type EventKind, type StoredEvent } from "./types.js";
import type { EventWake } from "./wake.js";

/** What a watcher asks for (WatchEvents' request, in domain terms). */
export interface WatchInput {
  kinds: readonly string[];
  /** "" for every provider the caller may act on. */
  provider: string;
  /** "" for every user (not allowed with a user binding). */
  userId: string;
  /** Decimal cursor to resume after; "" to start at the newest event. */
  resumeCursor: string;
  fromOldest: boolean;
}

/** One message of the stream: an event, or a checkpoint (no event) with the cursor to resume after. */
export interface WatchItem {
  event?: StoredEvent;
  cursor: EventCursor;
}

/** While nothing matches, a checkpoint at least this often: the resume point stays fresh, idle proxies see traffic. */
const CHECKPOINT_MS = 15_000;

/**
 * The WatchEvents streams of this replica: each reads the outbox after its
 * cursor whenever EventWake says there may be more (a commit here, NOTIFY
 * from another replica, the poll), one batch at a time, and waits for the
 * caller to take each message before reading on. At most
 * `events.max_watchers` at once; close() ends them all.
 */
export class EventWatchers {
  private readonly active = new Set<() => void>();
  private closing = false;

  constructor(
    private readonly repo: EventRepository,
    private readonly wake: EventWake,
    private readonly config: Pick<EventsConfig, "maxWatchers" | "batchSize">,
  ) {}

  /** Streams open now. */
  get count(): number {
    return this.active.size;
  }

  /** Serves one stream until the caller goes away (resolves) or it fails (rejects with a domain error). */
  watch(input: WatchInput, ctx: CallContext, send: (item: WatchItem) => Promise<void>): Promise<void> {
    return this.serve(input, ctx, send).catch(asDomainError);
  }

  private async serve(input: WatchInput, ctx: CallContext, send: (item: WatchItem) => Promise<void>): Promise<void> {
    const filter = filterOf(input, ctx);
    if (this.closing) throw new WatchClosingError();
    if (this.active.size >= this.config.maxWatchers) throw new TooManyWatchersError(this.config.maxWatchers);
    let pending = true;
    let poke: (() => void) | undefined;
    const nudge = () => {
      pending = true;
      poke?.();
    };
    this.active.add(nudge);
    const unsubscribe = this.wake.subscribe(nudge);
    const signal = ctx.signal;
    signal?.addEventListener("abort", nudge, { once: true });
    try {
      let cursor = await this.start(input);
      await send({ cursor });
      let lastSent = Date.now();
      for (;;) {
        if (this.closing) throw new WatchClosingError();
        if (signal?.aborted) return;
        pending = false;
        const page = await this.repo.readAfter(cursor, filter, this.config.batchSize).catch(asCursorError);
        for (const event of page.events) {
          if (signal?.aborted) return;
          await send({ event, cursor: event.cursor });
        }
        cursor = page.next;
        if (page.events.length > 0) lastSent = Date.now();
        else if (Date.now() - lastSent >= CHECKPOINT_MS) {
          await send({ cursor });
          lastSent = Date.now();
        }
        if (page.events.length === this.config.batchSize) continue;
        if (!pending) await new Promise<void>((resolve) => (poke = resolve));
        poke = undefined;
      }
    } finally {
      unsubscribe();
      signal?.removeEventListener("abort", nudge);
      this.active.delete(nudge);
    }
  }

  /** Where a stream starts: after its resume cursor (checked), at the oldest retained event, or at the newest. */
  private async start(input: WatchInput): Promise<EventCursor> {
    if (input.resumeCursor === "") return input.fromOldest ? this.repo.horizon() : this.repo.latest();
    const cursor = Number(input.resumeCursor);
    const [horizon, latest] = await Promise.all([this.repo.horizon(), this.repo.latest()]);
    if (cursor < horizon) throw new CursorOutOfRangeError("CURSOR_EXPIRED", horizon);
    if (cursor > latest) throw new CursorOutOfRangeError("CURSOR_AHEAD", latest);
    return cursor;
  }

  /** Ends every stream (shutdown): each fails with WatchClosingError, so callers resume elsewhere. */
  close(): void {
    this.closing = true;
    for (const nudge of [...this.active]) nudge();
  }
}

/** The request's filter, checked, narrowed to what the caller may see. */
function filterOf(input: WatchInput, ctx: CallContext): EventFilter {
  const kinds: EventKind[] = [];
  for (const k of input.kinds) {
    if (!isEventKind(k)) throw new InvalidArgumentError("kinds", "names an unknown event kind");
    kinds.push(k);
  }
  if (input.resumeCursor !== "" && !/^\d{1,15}$/.test(input.resumeCursor)) throw new InvalidArgumentError("resume_cursor", "must be a cursor from this stream");
  if (input.userId.length > 256) throw new InvalidArgumentError("user_id", "must be at most 256 characters");
  // A caller bound to users must name the one it acts for (checked by the RPC layer against its binding).
  if (ctx.userBinding && input.userId === "") throw new UserNotBoundError("user_id_required");
  return { kinds, providers: providersInScope(ctx, input.provider), ...(input.userId !== "" ? { userId: input.userId } : {}) };
}
