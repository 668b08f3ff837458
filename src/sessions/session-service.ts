import { randomBytes } from "node:crypto";
import { grantedResources, type SessionHead, type SessionRow } from "../db/session-entity.js";
import type { SessionReader } from "../db/session-reader.js";
import type { SessionRepository } from "../db/session-repository.js";
import { errSummary, sessionRef, type Logger } from "../logger.js";
import type { ProviderClient, ProviderRegistry } from "../providers/provider-client.js";
import { derivedTokenKey } from "../db/audience-repository.js";
import { createIdJagGrant } from "../refresh/id-jag.js";
import { NoIdpSessionError } from "./id-jag-errors.js";
import type { RefreshCoordinator, RefreshResult } from "../refresh/coordinator.js";
import { audienceFresh, type AudienceCoordinator, type AudienceToken, type AudienceWant, type DerivedGrant } from "../refresh/audience.js";
import {
  CallerDeadlineError,
  InvalidArgumentError,
  NoIdTokenError,
  ProviderUnavailableError,
  ReauthRequiredError,
  RefreshTimeoutError,
  ResourceNotGrantedError,
  SessionNotFoundError,
} from "./errors.js";
import { accessTokenExpiry, idTokenExpiry, idTokenIdentity, lifetimeSeconds, requiredValiditySeconds, secondsLeft } from "./expiry.js";
import type { CacheEntry, SessionCache } from "./session-cache.js";
import { LAST_USED_DEFAULTS, LastUsedWriter, type LastUsedWriterOptions } from "./last-used-writer.js";
import type { TokenVault } from "./token-vault.js";
import { requireProviderAllowed, requireResourceAllowed, type CallContext } from "./scope.js";
import { asDomainError } from "./store-errors.js";
import { SlotMap } from "../util/slot-set.js";
import { TurnGate } from "../util/turn-gate.js";

export type { CallContext } from "./scope.js";
import { NO_SPANS, type SpanOptions, type Spans } from "../tracing/spans.js";
import {
  checkExpiresIn,
  checkInstant,
  checkResource,
  checkResources,
  checkScope,
  checkToken,
  checkTokenType,
  requireSessionId,
  requireUserId,
} from "./validation.js";

/** Answers let go per event-loop turn after a shared refresh; see SessionService.answerGate. */
const ANSWERS_PER_TURN = 16;

export interface StoreSessionInput {
  userId: string;
  provider: string;
  tokens: {
    accessToken: string;
    refreshToken: string;
    idToken: string;
    tokenType: string;
    expiresIn: bigint;
    expiresAt: Date | undefined;
    scope: string;
    refreshExpiresAt: Date | undefined;
  };
  /** RFC 8707 resources granted at login (absolute URIs); none when omitted. */
  resources?: string[];
}

export type TokenKind = "access" | "id";

export interface GetTokenInput {
  userId: string;
  sessionId: string;
  provider: string;
  kind: TokenKind;
  minValidSeconds: number;
  forceRefresh: boolean;
  /** RFC 8707 resource: the audience the token is for; "" (or absent) for the session's own token. */
  resource?: string;
}

export interface TokenAnswer {
  token: string;
  tokenType: string;
  expiresAt: Date;
  scope: string;
  sessionId: string;
}

/** The session, unless GetToken named another provider than its own (then, as for no session: not found). */
function atProvider(head: SessionHead | null, provider: string): SessionHead | null {
  return head && provider !== "" && head.provider !== provider ? null : head;
}

/**
 * The domain: store a login, hand out a token valid right now (refreshing
 * just in time through the coordinator), revoke a login here and at the
 * provider.
 */
export class SessionService {
  /** Answers of held audience tokens, by token (heldAudienceAnswer); they go with their tokens. */
  private readonly heldAnswers = new WeakMap<AudienceToken, TokenAnswer>();
  /** Reads in flight by user and session, in a SlotMap: in a long-lived `Map` each read's promise, and its call, reached V8's old generation. */
  private readonly inflightReads = new SlotMap<Promise<{ head: SessionHead | null; entry?: CacheEntry }>>();
  /** last_used_at writes, batched: one statement for many sessions about once a second. */
  private readonly lastUsed: LastUsedWriter;

  constructor(
    private readonly repo: SessionRepository,
    private readonly reader: SessionReader,
    private readonly cache: SessionCache,
    private readonly vault: TokenVault,
    private readonly providers: ProviderRegistry,
    private readonly coordinator: RefreshCoordinator,
    private readonly audiences: AudienceCoordinator,
    private readonly logger: Logger,
    private readonly options: { lastUsedResolutionMs: number; lastUsedBatch?: Partial<Omit<LastUsedWriterOptions, "onDropped">>; spans?: Spans },
  ) {
    this.spans = options.spans ?? NO_SPANS;
    this.lastUsed = new LastUsedWriter((ids, times) => repo.touchMany(ids, times), {
      ...LAST_USED_DEFAULTS,
      ...options.lastUsedBatch,
      onDropped: (count, err) =>
        logger.debug(err === undefined ? { sessions: count } : { sessions: count, err: errSummary(err) }, "last_used_at not updated"),
    });
    const select = { ...this.spans.db, "db.operation.name": "SELECT", "db.collection.name": "sessions" };
    this.readById = { attributes: { ...select, "token_service.cache": "miss" } };
    this.readNewest = { attributes: { ...select, "token_service.cache": "none" } };
  }

  private readonly spans: Spans;
  /**
   * Callers woken together by one shared refresh (or audience token) go on in turns of this many, so the first
   * answers are sent while the rest are built (see TurnGate).
   */
  private readonly answerGate = new TurnGate(ANSWERS_PER_TURN);
  /** Span options of a database read of the session: by id (then cached), or the user's newest at a provider (never cached). */
  private readonly readById: SpanOptions;
  private readonly readNewest: SpanOptions;

  /** Stores a login's token set as a new session; returns its id. */
  storeSession(input: StoreSessionInput, ctx: CallContext = {}): Promise<{ sessionId: string; expiresAt: Date }> {
    return this.store(input, ctx).catch(asDomainError);
  }

  /** A token valid right now, refreshed at the provider first when needed. */
  getToken(input: GetTokenInput, ctx: CallContext = {}): Promise<TokenAnswer> {
    try {
      return Promise.resolve(this.tokenNow(input, ctx));
    } catch (err) {
      return Promise.reject(err as Error);
    }
  }

  /**
   * getToken for the RPC listeners: the answer itself, without a promise,
   * when it is at hand (a cached session whose token is fresh enough, the
   * hot path); else a promise of it. What getToken rejects with, this throws
   * or rejects with.
   */
  tokenNow(input: GetTokenInput, ctx: CallContext = {}): TokenAnswer | Promise<TokenAnswer> {
    let answer: TokenAnswer | Promise<TokenAnswer>;
    try {
      answer = this.get(input, ctx);
    } catch (err) {
      return asDomainError(err);
    }
    return answer instanceof Promise ? answer.catch(asDomainError) : answer;
  }

  private async store(input: StoreSessionInput, ctx: CallContext): Promise<{ sessionId: string; expiresAt: Date }> {
    const now = new Date();
    const userId = requireUserId(input.userId);
    const provider = this.requireProvider(input.provider, "provider");
    requireProviderAllowed(ctx, provider.id);
    const t = input.tokens;
    const accessToken = checkToken(t.accessToken, "tokens.access_token", true) as string;
    const refreshToken = checkToken(t.refreshToken, "tokens.refresh_token", false);
    const idToken = checkToken(t.idToken, "tokens.id_token", false);
    const tokenType = checkTokenType(t.tokenType);
    const scope = checkScope(t.scope);
    const resources = checkResources(input.resources ?? [], "resources");
    const expiresIn = checkExpiresIn(t.expiresIn);
    const expiresAt = checkInstant(t.expiresAt, "tokens.expires_at", now);
    const refreshExpiresAt = checkInstant(t.refreshExpiresAt, "tokens.refresh_expires_at", now);
    let idExpiresAt: Date | null = null;
    if (idToken !== undefined) {
      idExpiresAt = idTokenExpiry(idToken) ?? null;
      if (idExpiresAt === null) throw new InvalidArgumentError("tokens.id_token", "must be a JWT with an exp claim");
    }
    const expiry = accessTokenExpiry({
      accessToken,
      expiresAt,
      expiresInSeconds: expiresIn,
      now,
      defaultLifetimeSeconds: provider.config.defaultTokenLifetimeSeconds,
    });

    const id = randomBytes(32).toString("base64url");
    const owner = { id, userId, provider: provider.id };
    const row: SessionRow = {
      ...owner,
      ...this.vault.sealAll(owner, { access: accessToken, refresh: refreshToken, id: idToken }),
      status: "active",
      tokenType,
      scope,
      accessExpiresAt: expiry.expiresAt,
      accessIssuedAt: expiry.issuedAt,
      idExpiresAt,
      refreshExpiresAt: refreshExpiresAt ?? null,
      createdAt: now,
      updatedAt: now,
      lastUsedAt: now,
      version: 1,
      leaseOwner: null,
      leaseUntil: null,
      lastErrorCode: null,
      lastErrorAt: null,
      reauthReason: null,
      ...(idToken !== undefined ? idTokenIdentity(idToken) : { subject: null, sid: null }),
      resources: resources.length ? JSON.stringify(resources) : null,
    };
    await this.repo.insert({ ...row, ...this.coordinator.schedule.dueTimes(row, now) });
    this.logger.info(
      {
        audit: true,
        event: "store",
        caller: ctx.caller,
        userId,
        provider: provider.id,
        sid: sessionRef(id),
        expirySource: expiry.source,
        refreshable: refreshToken !== undefined,
      },
      "session stored",
    );
    return { sessionId: id, expiresAt: expiry.expiresAt };
  }

  /** GetToken: a plain value when the session is cached and its token fresh enough; every other way goes through a promise. */
  private get(input: GetTokenInput, ctx: CallContext): TokenAnswer | Promise<TokenAnswer> {
    const userId = requireUserId(input.userId);
    const resource = input.resource ? checkResource(input.resource, "resource") : undefined;
    if (resource !== undefined) {
      // A valid resource is an identifier, not a secret (no credentials, no query): it goes on the call's log line.
      ctx.logFields = { ...ctx.logFields, resource };
      if (input.kind === "id") throw new InvalidArgumentError("resource", "applies to access tokens only (kind ID_TOKEN has no audience to choose)");
      requireResourceAllowed(ctx, resource);
    }
    const managed = input.provider !== "" ? this.providers.get(input.provider) : undefined;
    if (managed?.config.kind === "enterprise_managed") return this.enterpriseToken(userId, managed, resource, input, ctx);
    if (input.sessionId !== "") {
      const sessionId = requireSessionId(input.sessionId);
      const entry = this.cachedById(userId, sessionId, ctx);
      if (entry) return this.tokenOf(atProvider(entry.head, input.provider), entry, resource, input, ctx);
      return this.readSessionById(sessionId, userId, ctx).then((read) => this.tokenOf(atProvider(read.head, input.provider), read.entry, resource, input, ctx));
    }
    if (input.provider === "") throw new InvalidArgumentError("provider", "is required when session_id is empty");
    requireProviderAllowed(ctx, input.provider);
    const provider = input.provider;
    return this.spans
      .run("session read", ctx.trace, this.readNewest, () => this.reader.findNewest(userId, provider))
      .then((head) => this.tokenOf(head, undefined, resource, input, ctx));
  }

  /** GetToken once the session is known: its token as it is when fresh enough (a plain value), else refreshed or for an audience. */
  private tokenOf(
    head: SessionHead | null,
    entry: CacheEntry | undefined,
    resource: string | undefined,
    input: GetTokenInput,
    ctx: CallContext,
  ): TokenAnswer | Promise<TokenAnswer> {
    if (!head) throw new SessionNotFoundError();
    requireProviderAllowed(ctx, head.provider);
    if (head.status !== "active") throw new ReauthRequiredError(head.reauthReason ?? "reauth_required", head.provider);
    if (input.kind === "id" && head.idCt === null) throw new NoIdTokenError();

    const now = new Date();
    const margin = this.providers.get(head.provider)?.config.refreshMarginSeconds ?? 60;
    if (resource !== undefined) return this.audienceToken(head, resource, input, { minValidSeconds: input.minValidSeconds, marginSeconds: margin }, entry, ctx);
    const required = requiredValiditySeconds({
      minValidSeconds: input.minValidSeconds,
      configuredMarginSeconds: margin,
      lifetimeSeconds: lifetimeSeconds(head.accessIssuedAt, head.accessExpiresAt),
    });
    const expiresAt = input.kind === "id" ? head.idExpiresAt : head.accessExpiresAt;
    if (!input.forceRefresh && expiresAt && secondsLeft(expiresAt, now) >= required) {
      this.touch(head, now);
      return this.answer(head, input.kind, undefined, entry);
    }
    return this.refreshedToken(head, entry, expiresAt, input, ctx);
  }

  /** GetToken when the token must be refreshed first; a still-valid token is kept when the provider is only slow or down. */
  private async refreshedToken(
    head: SessionHead,
    entry: CacheEntry | undefined,
    expiresAt: Date | null,
    input: GetTokenInput,
    ctx: CallContext,
  ): Promise<TokenAnswer> {
    let result: RefreshResult;
    try {
      result = await this.awaitRefresh(head, ctx);
    } catch (err) {
      const stillValid = expiresAt !== null && secondsLeft(expiresAt, new Date()) > 1;
      const transient =
        err instanceof ProviderUnavailableError || err instanceof RefreshTimeoutError || err instanceof CallerDeadlineError;
      if (transient && stillValid && !input.forceRefresh) {
        this.logger.info(
          { sid: sessionRef(head.id), provider: head.provider, code: (err as { code?: string }).code },
          "refresh not done; returning the current token, which is still valid",
        );
        this.touch(head, new Date());
        return this.answer(head, input.kind, undefined, entry);
      }
      throw err;
    }
    // Not cached from here: the next call reads the refreshed row (and caches it) under a fresh ticket.
    this.touch(result.row, new Date());
    const answer = this.answer(result.row, input.kind, result.tokens, (result.opened ??= {}));
    if (input.kind === "id" && answer.expiresAt.getTime() <= Date.now()) throw new NoIdTokenError();
    return answer;
  }

  /** A session by id read from the database (and cached), traced as the call's session read. */
  private readSessionById(sessionId: string, userId: string, ctx: CallContext): Promise<{ head: SessionHead | null; entry?: CacheEntry }> {
    return this.spans.run("session read", ctx.trace, this.readById, () => this.readSession(sessionId, userId));
  }

  /** The session's cache entry, if it has one (a hit is marked on the call's trace). */
  private cachedById(userId: string, sessionId: string, ctx: CallContext): CacheEntry | undefined {
    const entry = this.cache.get(userId, sessionId);
    if (entry && ctx.trace) this.spans.mark("session read", ctx.trace, { "token_service.cache": "hit" });
    return entry;
  }

  /**
   * GetToken at an enterprise-managed provider, which has no sessions of its
   * own: the user's session at the enterprise IdP (the one `session_id`
   * names, else the newest) and its ID token give an ID-JAG, which the
   * provider's authorization server redeems (see createIdJagGrant). The token
   * is kept as a derived audience token of that IdP session, whose id the
   * answer carries. A caller needs the enterprise-managed provider (and its
   * resource) in its scopes, not the IdP.
   */
  private enterpriseToken(userId: string, provider: ProviderClient, resource: string | undefined, input: GetTokenInput, ctx: CallContext): TokenAnswer | Promise<TokenAnswer> {
    requireProviderAllowed(ctx, provider.id);
    const target = provider.config.defaultResource ?? "";
    if (input.kind === "id") throw new InvalidArgumentError("kind", "an enterprise_managed provider hands out access tokens only");
    if (resource !== undefined && resource !== target) throw new InvalidArgumentError("resource", `must be empty or ${target} for provider ${provider.id}`);
    requireResourceAllowed(ctx, target);
    const idpId = provider.config.enterpriseIdp ?? "";
    const idp = this.providers.get(idpId);
    if (!idp) throw new ProviderUnavailableError("provider_not_configured", idpId);
    if (input.sessionId !== "") {
      const sessionId = requireSessionId(input.sessionId);
      const entry = this.cachedById(userId, sessionId, ctx);
      // A cached IdP session with its derived token held answers without a promise, as a plain GetToken does.
      if (entry) return this.derivedToken(entry.head, entry, provider, idp, target, input, ctx);
      return this.readSessionById(sessionId, userId, ctx).then((read) => this.derivedToken(read.head, read.entry, provider, idp, target, input, ctx));
    }
    return this.spans
      .run("session read", ctx.trace, this.readNewest, () => this.reader.findNewest(userId, idpId))
      .then((head) => {
        if (!head) throw new NoIdpSessionError(provider.id, idpId);
        return this.derivedToken(head, undefined, provider, idp, target, input, ctx);
      });
  }

  /** enterpriseToken once the user's session at the IdP is known: NOT_FOUND when `head` is none, or another provider's. */
  private derivedToken(
    head: SessionHead | null,
    entry: CacheEntry | undefined,
    provider: ProviderClient,
    idp: ProviderClient,
    target: string,
    input: GetTokenInput,
    ctx: CallContext,
  ): TokenAnswer | Promise<TokenAnswer> {
    if (!head || head.provider !== idp.id) throw new SessionNotFoundError();
    if (head.status !== "active") throw new ReauthRequiredError(head.reauthReason ?? "reauth_required", head.provider);
    if (head.idCt === null) throw new NoIdTokenError();
    const want = { minValidSeconds: input.minValidSeconds, marginSeconds: provider.config.refreshMarginSeconds };
    return this.audienceToken(head, derivedTokenKey(provider.id, target), input, want, entry, ctx, () => createIdJagGrant(provider, idp));
  }

  /** Waits for the shared refresh, but gives up just before the caller's deadline. */
  private awaitRefresh(row: SessionHead, ctx: CallContext): Promise<RefreshResult> {
    // The gate inside the deadline: a caller whose deadline comes while it waits its turn gives up at once.
    return this.withinDeadline(this.answerGate.through(this.coordinator.refresh(row, undefined, ctx.caller, ctx.trace)), ctx);
  }

  /**
   * The session's token for one audience (RFC 8707). In refresh mode only a
   * granted resource is asked for: oidc-provider, with rotation on, consumes
   * the refresh token before it refuses an unknown resource, so one bad
   * request would cost the user their session.
   */
  private audienceToken(
    head: SessionHead,
    resource: string,
    input: GetTokenInput,
    want: AudienceWant,
    entry: CacheEntry | undefined,
    ctx: CallContext,
    /** A derived token (ID-JAG): `resource` is its row key. */
    derive?: () => DerivedGrant,
  ): TokenAnswer | Promise<TokenAnswer> {
    const mode = this.providers.get(head.provider)?.config.audienceTokens ?? "refresh";
    if (!derive && mode === "refresh" && !grantedResources(head.resources).includes(resource)) throw new ResourceNotGrantedError(resource);
    const held = entry?.audiences?.get(resource);
    const now = new Date();
    if (held && !input.forceRefresh && audienceFresh(held, want, now)) {
      // Held and fresh enough: the answer itself, without a promise (the hot path with a resource), built once per
      // held token, as a plain GetToken's is per cached session version.
      this.touch(head, now);
      return this.heldAudienceAnswer(head, held);
    }
    return this.fetchedAudienceToken(head, resource, input, want, entry, held, ctx, derive);
  }

  /** audienceToken when the token must be obtained first; a held one still valid is kept when the provider is only slow or down. */
  private async fetchedAudienceToken(
    head: SessionHead,
    resource: string,
    input: GetTokenInput,
    want: AudienceWant,
    entry: CacheEntry | undefined,
    held: AudienceToken | undefined,
    ctx: CallContext,
    derive: (() => DerivedGrant) | undefined,
  ): Promise<TokenAnswer> {
    let token: AudienceToken;
    try {
      token = await this.withinDeadline(
        this.answerGate.through(this.audiences.get(head, resource, want, input.forceRefresh, ctx.caller ?? "unknown", ctx.trace, derive?.())),
        ctx,
      );
    } catch (err) {
      const transient = err instanceof ProviderUnavailableError || err instanceof RefreshTimeoutError || err instanceof CallerDeadlineError;
      if (transient && held && !input.forceRefresh && secondsLeft(held.expiresAt, new Date()) > 1) {
        this.logger.info(
          { sid: sessionRef(head.id), provider: head.provider, resource, code: (err as { code?: string }).code },
          "audience refresh not done; returning the held token, which is still valid",
        );
        this.touch(head, new Date());
        return this.audienceAnswer(head, held);
      }
      throw err;
    }
    if (entry) (entry.audiences ??= new Map()).set(resource, token);
    this.touch(head, new Date());
    return this.audienceAnswer(head, token);
  }

  private audienceAnswer(head: SessionHead, token: AudienceToken): TokenAnswer {
    return { token: token.token, tokenType: token.tokenType, expiresAt: token.expiresAt, scope: token.scope, sessionId: head.id };
  }

  /**
   * The answer for an audience token held in a cache entry, made once per token and frozen: a token is replaced,
   * never changed, when it is obtained again, so the answer (and the response and bytes made from it) is handed
   * out again as long as the token is held.
   */
  private heldAudienceAnswer(head: SessionHead, token: AudienceToken): TokenAnswer {
    const made = this.heldAnswers.get(token);
    if (made && made.sessionId === head.id) return made;
    const answer = Object.freeze(this.audienceAnswer(head, token));
    this.heldAnswers.set(token, answer);
    return answer;
  }

  /** Waits for `work`, but gives up just before the caller's deadline (or when it goes away). */
  private withinDeadline<T>(work: Promise<T>, ctx: CallContext): Promise<T> {
    const remaining = ctx.deadline !== undefined ? ctx.deadline - Date.now() : undefined;
    if (!ctx.onAbort && remaining === undefined) return work;
    // A timer and a cancel listener per waiting caller, and no AbortSignal: a refresh storm has thousands.
    return new Promise<T>((resolve, reject) => {
      let timer: NodeJS.Timeout | undefined;
      // Set from onAbort below, which may call giveUp before it returns (a caller already gone).
      let off: (() => void) | undefined = undefined;
      let done = false;
      const finish = (settle: () => void) => {
        if (done) return;
        done = true;
        if (timer) clearTimeout(timer);
        off?.();
        settle();
      };
      const giveUp = () => finish(() => reject(new CallerDeadlineError()));
      if (remaining !== undefined) {
        // Keep a little time to answer with the still-valid token, if there is one.
        const reserve = Math.min(100, Math.max(0, remaining * 0.1));
        timer = setTimeout(giveUp, Math.max(1, Math.floor(remaining - reserve)));
        timer.unref();
      }
      off = ctx.onAbort?.(giveUp);
      work.then(
        (v) => finish(() => resolve(v)),
        (e: unknown) => finish(() => reject(e)),
      );
    });
  }

  private answer(
    row: SessionHead,
    kind: TokenKind,
    tokens?: { access: string; id: string | undefined },
    /** Where tokens opened here are kept for the next answer (a cache entry, or a shared refresh result). */
    entry?: Pick<CacheEntry, "access" | "id" | "answers">,
  ): TokenAnswer {
    // Built once per cached session version (or shared refresh) and kind: the answer, and the response made from it, is reused.
    const cached = entry?.answers?.[kind];
    if (cached) return cached;
    let token: string | undefined;
    if (kind === "id") {
      token = tokens?.id ?? entry?.id ?? this.vault.openField(row, "id");
      if (entry && token) entry.id = token;
    } else {
      token = tokens?.access ?? entry?.access ?? this.vault.openField(row, "access");
      if (entry && token) entry.access = token;
    }
    if (!token) throw new NoIdTokenError();
    const expiresAt = kind === "id" ? row.idExpiresAt : row.accessExpiresAt;
    const answer: TokenAnswer = {
      token,
      tokenType: kind === "id" ? "N_A" : row.tokenType,
      expiresAt: expiresAt ?? row.accessExpiresAt,
      scope: row.scope,
      sessionId: row.id,
    };
    // Frozen: it is handed out again until the entry goes (the listeners reuse a frozen answer's response).
    if (entry) (entry.answers ??= {})[kind] = Object.freeze(answer);
    return answer;
  }

  /**
   * Reads a session for GetToken and caches it. Concurrent reads of the same
   * session and user share one query: a storm of callers costs one row read
   * per replica, not one per caller.
   */
  private readSession(sessionId: string, userId: string): Promise<{ head: SessionHead | null; entry?: CacheEntry }> {
    const key = `${userId}\u0000${sessionId}`;
    let read = this.inflightReads.get(key);
    if (!read) {
      const ticket = this.cache.ticket();
      // One `then` for both outcomes (not `then` and `finally`: three promises fewer on every cache miss).
      read = this.reader.findForUser(sessionId, userId).then(
        (head) => {
          this.inflightReads.delete(key);
          return { head, entry: head ? this.cache.set(head, ticket) : undefined };
        },
        (err: unknown) => {
          this.inflightReads.delete(key);
          throw err;
        },
      );
      this.inflightReads.set(key, read);
    }
    return read;
  }

  /**
   * Records use at most once per resolution window per session; never delays
   * or fails the call. The write is batched with other sessions' (LastUsedWriter):
   * last_used_at reaches the database within about a second.
   */
  private touch(row: SessionHead, now: Date): void {
    if (now.getTime() - row.lastUsedAt.getTime() < this.options.lastUsedResolutionMs) return;
    row.lastUsedAt = now;
    this.lastUsed.record(row.id, now);
  }

  /** Writes the uses not yet written (graceful shutdown: before the database closes). */
  close(): Promise<void> {
    return this.lastUsed.close();
  }

  private requireProvider(id: string, field: string) {
    if (id === "") throw new InvalidArgumentError(field, "is required");
    const provider = this.providers.get(id);
    if (!provider) throw new InvalidArgumentError(field, "is not a configured provider");
    if (provider.config.kind === "enterprise_managed") throw new InvalidArgumentError(field, "is enterprise_managed: it has no sessions of its own (its tokens come from the enterprise IdP's)");
    return provider;
  }
}
