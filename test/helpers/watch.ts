import { create, fromBinary, toBinary, type MessageInitShape } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import * as grpc from "@grpc/grpc-js";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "../../gen/google/rpc/status_pb.js";
import {
  EventService,
  WatchEventsRequestSchema,
  WatchEventsResponseSchema,
  type Event,
  type WatchEventsResponse,
} from "../../gen/tokenservice/v1/token_service_pb.js";

/** How a stream ended: OK (code 0) or a status with its ErrorInfo reason. */
export interface StreamEnd {
  code: number;
  reason?: string;
  metadata?: Record<string, string>;
}

/** One WatchEvents stream as a test sees it: every message so far, and how it ended. */
export interface Watch {
  readonly messages: WatchEventsResponse[];
  /** The events received (checkpoints left out). */
  events(): Event[];
  /** Resolves when the stream ends, with how it ended. */
  readonly ended: Promise<StreamEnd>;
  /** Waits until `done(events)` holds (or the stream ends, or `ms` pass: then rejects with what arrived). */
  until(done: (events: Event[]) => boolean, ms?: number): Promise<Event[]>;
  /** Resolves once the first message (the checkpoint) has arrived: the stream is reading. */
  started(): Promise<void>;
  close(): void;
}

type Request = MessageInitShape<typeof WatchEventsRequestSchema>;

function makeWatch(start: (push: (m: WatchEventsResponse) => void) => { ended: Promise<StreamEnd>; close(): void }): Watch {
  const messages: WatchEventsResponse[] = [];
  const waiters = new Set<() => void>();
  const push = (m: WatchEventsResponse) => {
    messages.push(m);
    for (const w of [...waiters]) w();
  };
  const stream = start(push);
  let finished: StreamEnd | undefined;
  const ended = stream.ended.then((end) => {
    finished = end;
    for (const w of [...waiters]) w();
    return end;
  });
  const events = () => messages.flatMap((m) => (m.event ? [m.event] : []));
  const wait = (ready: () => boolean, ms: number, what: () => string) =>
    new Promise<void>((resolve, reject) => {
      const check = () => {
        if (ready()) done(resolve);
        else if (finished) done(() => reject(new Error(`stream ended (${JSON.stringify(finished)}) before ${what()}`)));
      };
      const timer = setTimeout(() => done(() => reject(new Error(`timed out waiting: ${what()}`))), ms);
      const done = (fn: () => void) => {
        clearTimeout(timer);
        waiters.delete(check);
        fn();
      };
      waiters.add(check);
      check();
    });
  return {
    messages,
    events,
    ended,
    async until(done, ms = 20_000) {
      await wait(() => done(events()), ms, () => `events so far: ${JSON.stringify(events().map((e) => [e.kind, e.userId, e.reason]))}`);
      return events();
    },
    started: () => wait(() => messages.length > 0, 20_000, () => "the first message"),
    close: () => stream.close(),
  };
}

/** WatchEvents with Connect-ES, Connect protocol over HTTP/1.1 (JSON), to the HTTP listener. */
export function watchConnect(httpUrl: string, request: Request, options: { bearer?: string } = {}): Watch {
  const client = createClient(EventService, createConnectTransport({ baseUrl: httpUrl, httpVersion: "1.1" }));
  return makeWatch((push) => {
    const abort = new AbortController();
    const ended = (async (): Promise<StreamEnd> => {
      try {
        const headers: Record<string, string> = options.bearer ? { authorization: `Bearer ${options.bearer}` } : {};
        for await (const m of client.watchEvents(request, { signal: abort.signal, headers })) push(m);
        return { code: 0 };
      } catch (err) {
        const e = ConnectError.from(err);
        const info = e.findDetails(ErrorInfoSchema)[0];
        return { code: e.code, reason: info?.reason, metadata: info ? { ...info.metadata } : undefined };
      }
    })();
    return { ended, close: () => abort.abort() };
  });
}

/** WatchEvents with stock @grpc/grpc-js (messages encoded with protobuf-es), to the gRPC listener. */
export function watchGrpcJs(url: string, request: Request, options: { bearer?: string } = {}): Watch {
  const client = new grpc.Client(new URL(url).host, grpc.credentials.createInsecure());
  return makeWatch((push) => {
    const metadata = new grpc.Metadata();
    if (options.bearer) metadata.set("authorization", `Bearer ${options.bearer}`);
    const call = client.makeServerStreamRequest(
      `/${EventService.typeName}/WatchEvents`,
      (m: unknown) => Buffer.from(toBinary(WatchEventsRequestSchema, m as never)),
      (b: Buffer) => fromBinary(WatchEventsResponseSchema, b),
      create(WatchEventsRequestSchema, request),
      metadata,
      {},
    );
    call.on("data", (m: WatchEventsResponse) => push(m));
    const ended = new Promise<StreamEnd>((resolve) => {
      call.on("status", (status: grpc.StatusObject) => {
        const [bin] = status.metadata?.get("grpc-status-details-bin") ?? [];
        const details = bin instanceof Buffer ? fromBinary(StatusSchema, bin) : undefined;
        const info = details?.details.map((d) => anyUnpack(d, ErrorInfoSchema)).find((i) => i !== undefined);
        resolve({ code: status.code, reason: info?.reason, metadata: info ? { ...info.metadata } : undefined });
      });
      call.on("error", () => undefined);
    });
    return {
      ended: ended.finally(() => client.close()),
      close: () => call.cancel(),
    };
  });
}

export { Code };
