import type http from "node:http";
import type http2 from "node:http2";
import type { Socket } from "node:net";
import type { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { SpanKind, SpanStatusCode } from "@opentelemetry/api";
import { codeToHttpStatus } from "@connectrpc/connect/protocol-connect";
import type { Dispatcher } from "undici";
import { errSummary } from "../logger.js";
import type { IncomingCall, RpcChain } from "../rpc/chain.js";
import { RpcFailure } from "../rpc/chain.js";
import { peerOf, verifiedNames } from "../rpc/connect-service.js";
import { codeName } from "../rpc/errors.js";
import { requireProviderAllowed, requireResourceAllowed, type CallContext } from "../sessions/scope.js";
import type { TokenAnswer } from "../sessions/session-service.js";
import type { Spans } from "../tracing/spans.js";
import type { ForwardTarget } from "./config.js";
import { callerHeaders, SESSION_HEADER, upstreamHeaders, USER_HEADER } from "./headers.js";
import type { ForwardMetrics } from "./metrics.js";
import { noSessionOf, type ForwardTokens, type ForwardUser, type NoSession, type TokenSource } from "./tokens.js";
import { FORWARD_PATH, hasBody, header, invalidToken, splitForwardUrl } from "./request.js";
import { ReplayableBody, send, type Upstream, type Upstreams } from "./upstream.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

const TOKEN_SERVICE = "tokenservice.v1.TokenService";

function json(res: Response, status: number, body: Record<string, unknown>): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "cache-control": "no-store", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** Thrown inside the chain for an answer the proxy gives itself (no upstream request was made). */
class LocalAnswer extends Error {
  override name = "LocalAnswer";
  constructor(
    readonly status: number,
    readonly body: Record<string, unknown>,
  ) {
    super(String(body.reason));
  }
}

/** What happened to one forwarded request, for its log line and metrics. */
interface Outcome {
  status: number;
  source: TokenSource;
  retried: boolean;
}

/**
 * `/forward/{target}/{path…}` on the HTTP listener (docs/forwarding.md). Each
 * request goes through the RPC chain as the RPC `Forward` (caller identity,
 * RPC and provider scopes, rate limit, one log line), names its user with
 * x-token-service-user (and optionally x-token-service-session), and is sent
 * to the target with the user's token injected: the caller never holds it.
 */
export function createForwardRoute(deps: {
  chain: RpcChain;
  upstreams: Upstreams;
  tokens: ForwardTokens;
  metrics: ForwardMetrics;
  spans: Spans;
}): (req: Request, res: Response) => boolean {
  const { chain, upstreams, tokens, metrics, spans } = deps;

  /** The upstream request, in a CLIENT span whose traceparent goes with it. */
  async function attempt(
    up: Upstream,
    req: Request,
    path: string,
    token: string | undefined,
    body: Readable | Buffer | null | undefined,
    signal: AbortSignal,
    ctx: CallContext,
    source: TokenSource,
  ): Promise<Dispatcher.ResponseData> {
    const headers = upstreamHeaders(req.headers, up.target.header, token);
    const method = req.method ?? "GET";
    // Untraced calls (tracing off, or not sampled) build no attributes.
    const started = ctx.trace
      ? spans.begin(method, ctx.trace, {
          kind: SpanKind.CLIENT,
          attributes: {
            "http.request.method": method,
            "server.address": up.host,
            "server.port": up.port,
            "token_service.forward.target": up.target.id,
            "token_service.token_source": source,
          },
        })
      : undefined;
    if (started) {
      delete headers.traceparent;
      delete headers.tracestate;
      const carrier: Record<string, string> = {};
      spans.inject(started.ctx, carrier);
      Object.assign(headers, carrier);
    }
    try {
      const answer = await send(up, { method, path, headers, body, signal });
      started?.span.setAttribute("http.response.status_code", answer.statusCode);
      if (answer.statusCode >= 500) started?.span.setStatus({ code: SpanStatusCode.ERROR, message: String(answer.statusCode) });
      answer.body.once("close", () => started?.span.end());
      return answer;
    } catch (err) {
      const type = errSummary(err).code ?? errSummary(err).name;
      started?.span.setAttribute("error.type", type);
      started?.span.setStatus({ code: SpanStatusCode.ERROR, message: type });
      started?.span.end();
      throw err;
    }
  }

  /** The answer when there is no usable session and no fallback key: 401, the reason, and how to start an authorization. */
  function noSessionAnswer(target: string, resource: string | undefined, why: NoSession): LocalAnswer {
    return new LocalAnswer(401, {
      error: "no_usable_session",
      reason: why.reason,
      message: why.reason === "REAUTH_REQUIRED" ? "the user's session needs a new login" : why.reason === "RESOURCE_NOT_GRANTED" ? "the user's session was not granted this target's resource" : "the user has no session at this target's provider",
      target,
      provider: why.provider,
      start_authorization: { rpc: `${TOKEN_SERVICE}/StartAuthorization`, provider: why.provider, ...(resource ? { resources: [resource] } : {}) },
    });
  }

  /** The token for the one retry: the refreshed one, or the fallback key when the refresh showed the session unusable. */
  async function retryToken(t: ForwardTarget, user: ForwardUser, rejected: TokenAnswer, ctx: CallContext, outcome: Outcome): Promise<string> {
    try {
      return (await tokens.afterRejection(t, user, rejected, ctx)).token;
    } catch (err) {
      const why = noSessionOf(err, t);
      if (!why) throw err;
      ctx.logFields = { ...ctx.logFields, session: why.reason };
      if (t.fallbackKey === undefined) {
        outcome.source = "none";
        throw noSessionAnswer(t.id, t.resource, why);
      }
      outcome.source = "fallback";
      return t.fallbackKey;
    }
  }

  async function forward(req: Request, res: Response, target: string, rest: string, ctx: CallContext, outcome: Outcome, arrived: number, aborted: AbortSignal): Promise<void> {
    const up = upstreams.get(target);
    if (!up) throw new LocalAnswer(404, { error: "not_found", reason: "TARGET_NOT_FOUND", message: "no forward target has this id" });
    const t = up.target;
    // Scopes first: a caller outside them never makes the service send anything.
    requireProviderAllowed(ctx, t.provider);
    if (t.resource !== undefined) requireResourceAllowed(ctx, t.resource);
    const userId = header(req, USER_HEADER);
    const sessionId = header(req, SESSION_HEADER) ?? "";
    if (userId === undefined && (sessionId !== "" || t.fallbackKey === undefined)) {
      throw new LocalAnswer(400, { error: "invalid_request", reason: "USER_REQUIRED", message: `${USER_HEADER} is required` });
    }
    const user: ForwardUser | undefined = userId !== undefined ? { userId, sessionId } : undefined;
    if (user && ctx.userBinding) await ctx.userBinding.check(user.userId, sessionId !== "" ? "session" : "lookup");

    let answer: TokenAnswer | undefined;
    let token: string | undefined;
    if (user) {
      try {
        answer = await tokens.get(t, user, ctx);
        token = answer.token;
        outcome.source = t.resource !== undefined ? "audience" : "session";
      } catch (err) {
        const why = noSessionOf(err, t);
        if (!why) throw err;
        ctx.logFields = { ...ctx.logFields, session: why.reason };
        if (t.fallbackKey === undefined) throw noSessionAnswer(t.id, t.resource, why);
      }
    }
    if (token === undefined) {
      // No user named (the check above saw a fallback key), or no usable session.
      token = t.fallbackKey;
      outcome.source = "fallback";
    }

    const body = new ReplayableBody(hasBody(req) ? (req as Readable) : undefined, upstreams.replayMaxBytes);
    const path = `${up.basePath}${rest}` || "/";
    const sendOnce = async (value: string | undefined, payload: Readable | Buffer | null | undefined) => {
      try {
        return await attempt(up, req, path, value, payload, aborted, ctx, outcome.source);
      } catch (err) {
        if (aborted.aborted) return undefined;
        ctx.logFields = { ...ctx.logFields, upstream_error: errSummary(err).code ?? errSummary(err).name };
        throw upstreamFailure(err);
      }
    };
    let upstream = await sendOnce(token, body.first());
    if (upstream && answer && invalidToken(upstream)) {
      const replay = body.again();
      if (replay !== undefined) {
        await upstream.body.dump().catch(() => undefined);
        outcome.retried = true;
        upstream = await sendOnce(await retryToken(t, user!, answer, ctx, outcome), replay);
      }
    }
    // The caller went away: the upstream request is aborted, and the chain logs the call as cancelled.
    if (!upstream) return;
    metrics.firstByteAfter(t.id, (performance.now() - arrived) / 1000);
    outcome.status = upstream.statusCode;
    res.writeHead(upstream.statusCode, callerHeaders(upstream.headers));
    // A stream (no length: SSE, MCP) gets its headers now, before its first event; a body of known length goes out with them.
    if (upstream.headers["content-length"] === undefined && "flushHeaders" in res) res.flushHeaders();
    try {
      await pipeline(upstream.body, res);
    } catch (err) {
      // Mid-stream, the caller has its status already: the stream is cut off, and the log says why.
      if (!aborted.aborted) ctx.logFields = { ...ctx.logFields, upstream_error: errSummary(err).code ?? errSummary(err).name };
      res.destroy();
    }
  }

  return (req, res) => {
    const url = req.url ?? "";
    if (!url.startsWith(FORWARD_PATH)) return false;
    const arrived = performance.now();
    const split = splitForwardUrl(url);
    const outcome: Outcome = { status: 0, source: "none", retried: false };
    const label = split && upstreams.get(split.target) ? split.target : "unknown";
    const controller = new AbortController();
    let gone = false;
    res.once("close", () => {
      if (!res.writableFinished) {
        gone = true;
        controller.abort();
      }
    });
    const socket = req.socket as Socket | undefined;
    const call: IncomingCall = {
      service: TOKEN_SERVICE,
      method: "Forward",
      protocol: "http",
      peer: peerOf(socket),
      authorization: () => header(req, "authorization"),
      peerNames: () => verifiedNames(socket),
      header: (name) => header(req, name),
      deadline: undefined,
      isCancelled: () => gone,
      onCancel: (listener) => controller.signal.addEventListener("abort", listener, { once: true }),
    };
    const finish = () => metrics.finished(label, gone && outcome.status === 0 ? 0 : outcome.status, outcome.source, (performance.now() - arrived) / 1000);
    chain
      .run(call, async (ctx) => {
        try {
          if (!split) throw new LocalAnswer(400, { error: "invalid_request", reason: "BAD_PATH", message: "the path must not hold dot segments" });
          // The call's signal aborts when the caller goes away (onCancel above) and when shutdown cuts calls off.
          await forward(req, res, split.target, split.rest, ctx, outcome, arrived, ctx.signal!);
        } catch (err) {
          if (!(err instanceof LocalAnswer)) throw err;
          outcome.status = err.status;
          json(res, err.status, err.body);
        } finally {
          ctx.logFields = { ...ctx.logFields, target: label, status: String(outcome.status), token_source: outcome.source, ...(outcome.retried ? { retried: "true" } : {}) };
        }
      })
      .catch((err: unknown) => {
        if (err instanceof RpcFailure) {
          const status = err.status;
          if (res.headersSent) {
            res.destroy();
          } else {
            outcome.status = codeToHttpStatus(status.code);
            json(res, outcome.status, { code: codeName(status.code), reason: status.reason ?? codeName(status.code).toUpperCase(), message: status.message });
          }
        } else {
          res.destroy();
        }
      })
      .finally(finish);
    return true;
  };
}

const TIMEOUTS = new Set(["UND_ERR_HEADERS_TIMEOUT", "UND_ERR_CONNECT_TIMEOUT"]);

/** An upstream that did not answer in time (504) or could not be reached (502), as the proxy's own answer. */
function upstreamFailure(err: unknown): LocalAnswer {
  const code = errSummary(err).code ?? errSummary(err).name;
  if (TIMEOUTS.has(code)) return new LocalAnswer(504, { error: "upstream_timeout", reason: "UPSTREAM_TIMEOUT", message: "the target did not answer in time", detail: code });
  return new LocalAnswer(502, { error: "upstream_unreachable", reason: "UPSTREAM_UNREACHABLE", message: "the target could not be reached", detail: code });
}

