import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { EventSchema, EventService, WatchEventsResponseSchema, type Event } from "../../gen/tokenservice/v1/token_service_pb.js";
import type { EventWatchers } from "../events/watchers.js";
import type { StoredEvent } from "../events/types.js";
import type { ServiceHandlers } from "./handlers.js";

/** An outbox event on the wire: ids, provider, user, reason, time; never a token (there is none to carry). */
export function eventMessage(e: StoredEvent): Event {
  return create(EventSchema, {
    id: e.id,
    cursor: String(e.cursor),
    kind: e.kind,
    provider: e.provider ?? "",
    userId: e.userId ?? "",
    sessionId: e.sessionId ?? "",
    reason: e.reason ?? "",
    time: timestampFromDate(e.createdAt),
    detail: Object.fromEntries(Object.entries(e.detail ?? {}).map(([k, v]) => [k, String(v)])),
  });
}

/** EventService: proto in, domain call, proto out. */
export function createEventServiceHandlers(watchers: EventWatchers): ServiceHandlers<typeof EventService> {
  return {
    async watchEvents(req, ctx, send) {
      if (ctx.userBinding && req.userId !== "") await ctx.userBinding.check(req.userId, "all_sessions");
      await watchers.watch(
        { kinds: req.kinds, provider: req.provider, userId: req.userId, resumeCursor: req.resumeCursor, fromOldest: req.fromOldest },
        ctx,
        (item) => send(create(WatchEventsResponseSchema, { cursor: String(item.cursor), event: item.event ? eventMessage(item.event) : undefined })),
      );
    },
  };
}
