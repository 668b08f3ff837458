import { createHash } from "node:crypto";
import * as oidc from "openid-client";
import type { AuthorizationRepository } from "../db/provider-repository.js";
import { sessionRef, type Logger } from "../logger.js";
import { ChallengeSyntaxError, parseBearerChallenge, type BearerChallenge } from "../providers/challenge.js";
import { classifyProviderError } from "../providers/errors.js";
import { withReregistration, type ProviderClient, type ProviderRegistry } from "../providers/provider-client.js";
import { InvalidArgumentError, ProviderUnavailableError } from "../sessions/errors.js";
import { requireProviderAllowed, type CallContext } from "../sessions/scope.js";
import type { SessionService } from "../sessions/session-service.js";
import { asDomainError } from "../sessions/store-errors.js";
import { requireUserId } from "../sessions/validation.js";
import { AuthorizationDeniedError, CodeRejectedError, InvalidCallbackError, InvalidStateError } from "./errors.js";
import { selectScopes } from "./scope-selection.js";
import type { SecretVault } from "./secret-vault.js";
import type { StepUps } from "./step-up.js";
import { checkResources, checkScopes, checkUrl } from "./validation.js";

/** Parameters of the authorization request the service sets itself; extra_params may not set them. */
const RESERVED = new Set([
  "state",
  "code_challenge",
  "code_challenge_method",
  "redirect_uri",
  "client_id",
  "response_type",
  "nonce",
  "scope",
  "resource",
  "request",
  "request_uri",
]);
const SAFE_ERROR = /^[\x20-\x21\x23-\x5B\x5D-\x7E]{1,64}$/;

export interface StartAuthorizationInput {
  userId: string;
  provider: string;
  redirectUri: string;
  scopes: string[];
  resources: string[];
  extraParams: Record<string, string>;
  /** The raw WWW-Authenticate value a tool server answered with; "" or absent: none. */
  challenge?: string;
  /** A session of the user at the provider to step up in place; "" or absent: a new session. */
  sessionId?: string;
}

/** What is kept, sealed, between StartAuthorization and CompleteAuthorization. */
interface PendingAuthorization {
  codeVerifier: string;
  nonce: string | undefined;
  scopes: string[];
  resources: string[];
  /** The session a step-up replaces the tokens of. */
  stepUp?: string;
}

export interface CodeFlowDeps {
  repo: AuthorizationRepository;
  registry: ProviderRegistry;
  vault: SecretVault;
  sessions: SessionService;
  stepUps: StepUps;
  stateTtlMs: number;
  providerTimeoutMs: number;
  logger: Logger;
}

function stateId(state: string): string {
  return createHash("sha256").update(state).digest("hex");
}

/** Whether two URLs are the same after parsing (case of scheme and host, default port); false when either does not parse. */
function sameUrl(a: string, b: string): boolean {
  try {
    return new URL(a).href === new URL(b).href;
  } catch {
    return false;
  }
}

/** The redirect URI a callback URL came back to: the URL without its query and fragment. */
function withoutQuery(url: URL): string {
  return `${url.origin}${url.pathname}`;
}

/**
 * The authorization code flow with PKCE (RFC 7636), run by the service for
 * its callers: StartAuthorization makes the state, verifier and nonce and
 * keeps them server-side, sealed, for one use; CompleteAuthorization checks
 * the callback, exchanges the code and stores the session.
 */
export class CodeFlow {
  constructor(private readonly deps: CodeFlowDeps) {}

  start(input: StartAuthorizationInput, ctx: CallContext = {}): Promise<{ authorizationUrl: string; state: string; expiresAt: Date; scopes: string[] }> {
    return this.startFlow(input, ctx).catch(asDomainError);
  }

  complete(
    input: { userId: string; callbackUrl: string },
    ctx: CallContext = {},
  ): Promise<{ sessionId: string; expiresAt: Date; provider: string; steppedUp: boolean }> {
    return this.completeFlow(input, ctx).catch(asDomainError);
  }

  private provider(id: string, field = "provider"): ProviderClient {
    if (id === "") throw new InvalidArgumentError(field, "is required");
    const provider = this.deps.registry.get(id);
    if (!provider) throw new InvalidArgumentError(field, "is not a configured provider");
    if (provider.config.kind === "enterprise_managed") throw new InvalidArgumentError(field, "is enterprise_managed: it has no sessions of its own (its tokens come from the enterprise IdP's)");
    return provider;
  }

  private async startFlow(input: StartAuthorizationInput, ctx: CallContext) {
    const userId = requireUserId(input.userId);
    const provider = this.provider(input.provider);
    requireProviderAllowed(ctx, provider.id);
    const config = provider.config;
    const redirectUri = checkUrl(input.redirectUri, "redirect_uri", true).href;
    if (config.redirectUris.length > 0 && !config.redirectUris.includes(redirectUri)) {
      throw new InvalidArgumentError("redirect_uri", "is not one of the provider's redirect_uris");
    }
    const extra = Object.entries(input.extraParams);
    if (extra.length > 32) throw new InvalidArgumentError("extra_params", "must hold at most 32 parameters");
    for (const [k, v] of extra) {
      if (RESERVED.has(k.toLowerCase())) throw new InvalidArgumentError("extra_params", `may not set ${k}: the service sets it`);
      if (k.length > 128 || v.length > 2048) throw new InvalidArgumentError("extra_params", "keys are at most 128 and values 2048 characters");
    }
    const requested = checkScopes(input.scopes);
    const challenge = input.challenge ? this.challenge(input.challenge, provider) : undefined;
    const deadline = Date.now() + this.deps.providerTimeoutMs;
    const metadata = await provider.metadata({ deadline, signal: ctx.signal });
    const openid = config.runtime?.openid ?? Array.isArray(metadata.id_token_signing_alg_values_supported);
    // Counted last, once every check of the request passed.
    const stepUp = input.sessionId ? await this.deps.stepUps.begin({ userId, provider: provider.id, sessionId: input.sessionId }, ctx) : undefined;
    const scopes = checkScopes(
      selectScopes({ requested, challenge, granted: stepUp?.scopes, config, serverScopes: metadata.scopes_supported, openid }),
    );
    const resources = checkResources(
      input.resources.length ? input.resources : stepUp?.resources.length ? stepUp.resources : config.defaultResource ? [config.defaultResource] : [],
    );

    const state = oidc.randomState();
    const codeVerifier = oidc.randomPKCECodeVerifier();
    // An ID token (and so a nonce) only when openid is asked for: a resource's own scopes may not include it.
    const nonce = openid && scopes.includes("openid") ? oidc.randomNonce() : undefined;
    const url = await provider.authorizationUrl(
      {
        ...Object.fromEntries(extra),
        redirect_uri: redirectUri,
        ...(scopes.length ? { scope: scopes.join(" ") } : {}),
        state,
        code_challenge: await oidc.calculatePKCECodeChallenge(codeVerifier),
        code_challenge_method: "S256",
        ...(nonce ? { nonce } : {}),
      },
      { deadline, signal: ctx.signal },
    );
    for (const r of resources) url.searchParams.append("resource", r);

    const now = new Date();
    const id = stateId(state);
    const pending: PendingAuthorization = { codeVerifier, nonce, scopes, resources, ...(stepUp ? { stepUp: stepUp.sessionId } : {}) };
    const sealed = this.deps.vault.seal("authorization", id, "payload", JSON.stringify(pending));
    const expiresAt = new Date(now.getTime() + this.deps.stateTtlMs);
    await this.deps.repo.insertState({
      id,
      userId,
      provider: provider.id,
      redirectUri,
      keyId: sealed.keyId,
      payloadCt: sealed.blob,
      createdAt: now,
      expiresAt,
      usedAt: null,
    });
    this.deps.logger.info(
      {
        audit: true,
        event: "authorization_started",
        caller: ctx.caller,
        userId,
        provider: provider.id,
        resources: resources.length ? resources : undefined,
        scopes,
        ...(stepUp ? { stepUp: sessionRef(stepUp.sessionId) } : {}),
      },
      "authorization started",
    );
    return { authorizationUrl: url.href, state, expiresAt, scopes };
  }

  /**
   * A tool server's WWW-Authenticate value, parsed strictly. Its
   * `resource_metadata` is never fetched (the caller relays it from a tool
   * server): it must be the provider's recorded one, when one is recorded.
   */
  private challenge(value: string, provider: ProviderClient): BearerChallenge {
    let parsed: BearerChallenge;
    try {
      parsed = parseBearerChallenge(value);
    } catch (err) {
      if (err instanceof ChallengeSyntaxError) throw new InvalidArgumentError("challenge", err.why);
      throw err;
    }
    if (parsed.error !== undefined && parsed.error !== "insufficient_scope" && parsed.error !== "invalid_token") {
      throw new InvalidArgumentError("challenge", "has an error that no authorization answers (only invalid_token and insufficient_scope do)");
    }
    const recorded = provider.config.runtime?.resourceMetadataUrl;
    if (parsed.resourceMetadata !== undefined && recorded !== undefined && sameUrl(parsed.resourceMetadata, recorded) === false) {
      throw new InvalidArgumentError("challenge", "names a resource_metadata other than this provider's; register that resource as a provider of its own");
    }
    return parsed;
  }

  private async completeFlow(input: { userId: string; callbackUrl: string }, ctx: CallContext) {
    const userId = requireUserId(input.userId);
    let url: URL;
    try {
      url = new URL(input.callbackUrl);
    } catch {
      throw new InvalidArgumentError("callback_url", "must be the absolute URL the browser came back to");
    }
    const refuse = (why: InvalidStateError["why"], provider?: string) => {
      // The caller sees INVALID_STATE only; the log says which check failed (never the state itself).
      this.deps.logger.info({ audit: true, event: "authorization_state_refused", caller: ctx.caller, userId, provider, why }, "authorization state refused");
      return new InvalidStateError(why);
    };
    const state = url.searchParams.get("state");
    if (!state) throw refuse("missing");
    const found = await this.deps.repo.findState(stateId(state), new Date());
    if (found.found !== "ok") throw refuse(found.found);
    const row = found.row;
    // Every check before the state's one use, so a stranger's attempt leaves it to its owner.
    if (row.userId !== userId) throw refuse("other_user", row.provider);
    if (withoutQuery(url) !== withoutQuery(new URL(row.redirectUri))) throw refuse("other_redirect_uri", row.provider);
    requireProviderAllowed(ctx, row.provider);
    const provider = this.provider(row.provider);
    if (!(await this.deps.repo.takeState(row.id, new Date()))) throw refuse("used", row.provider);
    const pending = JSON.parse(this.deps.vault.open("authorization", row.id, "payload", row.keyId, row.payloadCt)) as PendingAuthorization;

    const denied = url.searchParams.get("error");
    if (denied !== null) {
      const error = SAFE_ERROR.test(denied) ? denied : "invalid_error_code";
      this.deps.logger.info({ audit: true, event: "authorization_denied", caller: ctx.caller, userId, provider: row.provider, error }, "authorization denied");
      throw new AuthorizationDeniedError(error);
    }
    const deadline = Date.now() + this.deps.providerTimeoutMs;
    // At most one resource on the code exchange: some servers refuse more; each audience is fetched later.
    let tokens;
    try {
      // A client the service registered itself that is answered invalid_client registers again once (the code is not spent then).
      tokens = await withReregistration(this.deps.registry, provider, (client) =>
        client.exchangeCode(url, { codeVerifier: pending.codeVerifier, state, nonce: pending.nonce }, pending.resources[0], {
          deadline,
          signal: ctx.signal,
          trace: ctx.trace,
        }),
      );
    } catch (err) {
      throw this.exchangeError(err, provider.id);
    }
    if (pending.stepUp !== undefined) {
      const stepped = await this.deps.stepUps.complete(
        { sessionId: pending.stepUp, userId, provider, tokens, resources: pending.resources, scopes: pending.scopes },
        ctx,
      );
      return { ...stepped, provider: provider.id, steppedUp: true };
    }
    const now = Date.now();
    const stored = await this.deps.sessions.storeSession(
      {
        userId,
        provider: provider.id,
        tokens: {
          accessToken: tokens.accessToken,
          refreshToken: tokens.refreshToken ?? "",
          idToken: tokens.idToken ?? "",
          tokenType: tokens.tokenType,
          expiresIn: BigInt(tokens.expiresIn ?? 0),
          expiresAt: undefined,
          scope: tokens.scope ?? pending.scopes.join(" "),
          refreshExpiresAt: tokens.refreshExpiresIn ? new Date(now + tokens.refreshExpiresIn * 1000) : undefined,
        },
        resources: pending.resources,
      },
      ctx,
    );
    this.deps.logger.info(
      { audit: true, event: "authorization_completed", caller: ctx.caller, userId, provider: provider.id, sid: sessionRef(stored.sessionId) },
      "authorization completed",
    );
    return { sessionId: stored.sessionId, expiresAt: stored.expiresAt, provider: provider.id, steppedUp: false };
  }

  /** A failed code exchange: refused by the provider, the provider unreachable, or a check of the answer failed. */
  private exchangeError(err: unknown, provider: string): Error {
    if (err instanceof oidc.ResponseBodyError && err.status < 500 && err.status !== 429) {
      return new CodeRejectedError(SAFE_ERROR.test(err.error) ? err.error : "invalid_request", { cause: err });
    }
    const e = classifyProviderError(err);
    if (err instanceof oidc.ClientError && e.code === "bad_response" && err.code !== "OAUTH_RESPONSE_IS_NOT_JSON") {
      return new InvalidCallbackError(err.code ?? "invalid_response", { cause: err });
    }
    if (e.kind === "rejected") return new CodeRejectedError(e.code, { cause: err });
    return new ProviderUnavailableError(e.code, provider, { cause: err });
  }
}
