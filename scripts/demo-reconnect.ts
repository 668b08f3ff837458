/**
 * The demo's connection-health step (docs/connection-health.md): a gateway
 * watches events, learns from session.reauth_required that Erin's session
 * died, and prompts her to reconnect before any tool call fails; she does,
 * in place, and the gateway hears session.reconnected.
 */
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { ConnectError, createClient } from "@connectrpc/connect";
import { createConnectTransport } from "@connectrpc/connect-node";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { EventService, type Event } from "../gen/tokenservice/v1/token_service_pb.js";
import type { ConnectTokenClient } from "../test/helpers/clients.js";
import type { TestProvider } from "../test/helpers/oidc-provider.js";

export interface ReconnectDemo {
  client: ConnectTokenClient;
  /** The service's HTTP listener (WatchEvents over Connect, HTTP/1.1). */
  httpUrl: string;
  provider: TestProvider;
  /** The YAML provider id the demo's sessions use. */
  providerId: string;
  info(line: string): void;
  check(ok: boolean, what: string): void;
}

/** Runs the step; resolves once Erin is reconnected and the gateway has seen both events. */
export async function reconnectPromptStep(d: ReconnectDemo): Promise<void> {
  const { client, provider, info, check } = d;
  const events = createClient(EventService, createConnectTransport({ baseUrl: d.httpUrl, httpVersion: "1.1" }));
  const abort = new AbortController();
  const seen: Event[] = [];
  let prompted: ((url: string) => void) | undefined;
  const promptShown = new Promise<string>((resolve) => (prompted = resolve));
  let reconnected: (() => void) | undefined;
  const backInPlace = new Promise<void>((resolve) => (reconnected = resolve));
  let ready: (() => void) | undefined;
  const watching = new Promise<void>((resolve) => (ready = resolve));

  // The gateway's watcher: one stream, Erin's events only.
  const gateway = (async () => {
    const stream = events.watchEvents({ userId: "erin", kinds: ["session.reauth_required", "session.reconnected"] }, { signal: abort.signal });
    for await (const m of stream) {
      if (!m.event) {
        ready?.();
        continue;
      }
      const e = m.event;
      seen.push(e);
      if (e.kind === "session.reauth_required") {
        const start = await client.startAuthorization({ userId: e.userId, provider: e.provider, sessionId: e.sessionId, redirectUri: provider.redirectUri });
        info(`gateway sees ${e.kind} (${e.reason}, cursor ${e.cursor}) and tells Erin:`);
        info(`  → "reconnect your ${e.provider} account: ${start.authorizationUrl.slice(0, 72)}…"`);
        prompted?.(start.authorizationUrl);
      } else if (e.kind === "session.reconnected") {
        info(`gateway sees ${e.kind}: the prompt can go`);
        reconnected?.();
      }
    }
  })().catch((err: unknown) => {
    if (!abort.signal.aborted) throw err;
  });

  try {
    // The stream's first message, or its error if it ends first.
    await Promise.race([watching, gateway.then(() => Promise.reject(new Error("the event stream ended before it started")))]);
    info("the gateway watches WatchEvents (Connect over HTTP/1.1) for Erin's session.reauth_required and session.reconnected");
    const erin = await provider.login("erin");
    const stored = await client.storeSession({
      userId: "erin",
      provider: d.providerId,
      tokens: { accessToken: erin.access_token, refreshToken: erin.refresh_token, idToken: erin.id_token, expiresAt: timestampFromDate(new Date(Date.now() - 1000)) },
    });
    // Her refresh token is used somewhere else: with rotation, the provider now refuses the service's copy.
    check((await provider.redeem(erin.refresh_token)).status === 200, "the provider should rotate the refresh token");
    info("Erin's refresh token dies at the provider (it was rotated elsewhere; idle timeouts and revocations look the same)");
    const failed = await client.getToken({ userId: "erin", sessionId: stored.sessionId }).catch((e: unknown) => e);
    const reason = failed instanceof ConnectError ? failed.findDetails(ErrorInfoSchema)[0]?.reason : undefined;
    check(reason === "REAUTH_REQUIRED", `the nightly job's GetToken should get REAUTH_REQUIRED, got ${String(reason)}`);
    info("a nightly job's GetToken → REAUTH_REQUIRED; the session is marked, and the event is written in the same transaction");
    const url = await promptShown;
    const done = await client.completeAuthorization({ userId: "erin", callbackUrl: await provider.authorize(url, "erin") });
    check(done.steppedUp && done.sessionId === stored.sessionId, "reconnecting should keep the session id");
    await backInPlace;
    const token = await client.getToken({ userId: "erin", sessionId: stored.sessionId });
    check(token.token.length > 0, "the reconnected session should serve a token");
    info(`Erin follows the link; CompleteAuthorization reconnects session ${done.sessionId.slice(0, 8)}… in place; GetToken works again`);
    check(seen.map((e) => e.kind).join() === "session.reauth_required,session.reconnected", `the gateway should see two events, saw ${seen.map((e) => e.kind).join()}`);
  } finally {
    abort.abort();
    await gateway;
  }
}
