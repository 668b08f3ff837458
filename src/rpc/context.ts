import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";
import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";

/** The remote address of the connection a call arrived on. */
export const kPeer = createContextKey<string>("unknown", { description: "peer address" });

/** Authenticated caller name; "anonymous" until caller authentication is configured. */
export const kCaller = createContextKey<string>("anonymous", { description: "caller name" });

/** Per-request values taken from the Node request before any handler runs. */
export function contextValuesFor(req: IncomingMessage | Http2ServerRequest): ContextValues {
  const values = createContextValues();
  const socket = req.socket;
  if (socket.remoteAddress) values.set(kPeer, `${socket.remoteAddress}:${socket.remotePort ?? 0}`);
  return values;
}
