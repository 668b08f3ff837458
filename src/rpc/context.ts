import type { IncomingMessage } from "node:http";
import type { Http2ServerRequest } from "node:http2";
import type { TLSSocket } from "node:tls";
import { createContextKey, createContextValues, type ContextValues } from "@connectrpc/connect";

/** The remote address of the connection a call arrived on. */
export const kPeer = createContextKey<string>("unknown", { description: "peer address" });

/** Names of a verified client certificate: subject CN and DNS SANs (mutual TLS). */
export const kPeerNames = createContextKey<readonly string[]>([], { description: "client certificate names" });

/** Authenticated caller name; "anonymous" when no callers are configured. */
export const kCaller = createContextKey<string>("anonymous", { description: "caller name" });

/** What the caller may act on; providers undefined: all. */
export const kCallerScope = createContextKey<{ providers: ReadonlySet<string> | undefined }>(
  { providers: undefined },
  { description: "caller scope" },
);

/** The CN and DNS subject alternative names of a peer certificate the TLS layer verified. */
export function certificateNames(socket: TLSSocket): string[] {
  if (!socket.encrypted || !socket.authorized) return [];
  const cert = socket.getPeerCertificate();
  if (!cert || Object.keys(cert).length === 0) return [];
  const names: string[] = [];
  const cn = cert.subject?.CN;
  if (typeof cn === "string") names.push(cn);
  for (const part of (cert.subjectaltname ?? "").split(",")) {
    const m = /^\s*DNS:(.+)$/.exec(part);
    if (m) names.push(m[1]!.trim());
  }
  return names;
}

/** Per-request values taken from the Node request before any handler runs. */
export function contextValuesFor(req: IncomingMessage | Http2ServerRequest): ContextValues {
  const values = createContextValues();
  const socket = req.socket;
  if (socket.remoteAddress) values.set(kPeer, `${socket.remoteAddress}:${socket.remotePort ?? 0}`);
  if ((socket as TLSSocket).encrypted) values.set(kPeerNames, certificateNames(socket as TLSSocket));
  return values;
}
