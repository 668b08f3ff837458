import { create } from "@bufbuild/protobuf";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import {
  AudienceTokenMode,
  DeleteProviderResponseSchema,
  ListProvidersResponseSchema,
  ProviderKind,
  ProviderRegistration,
  ProviderRegistrationMode,
  ProviderSchema,
  ProviderSource,
  RegisterProviderResponseSchema,
  type Provider,
  type ProviderService,
} from "../../gen/tokenservice/v1/token_service_pb.js";
import type { ProviderAdmin, ProviderView } from "../authorization/provider-admin.js";
import type { RegistrationMode } from "../authorization/registration-choice.js";
import { requireProviderAllowed } from "../sessions/scope.js";
import type { ServiceHandlers } from "./handlers.js";
import { InvalidArgumentError } from "../sessions/errors.js";

function audienceModeOf(mode: AudienceTokenMode): "" | "refresh" | "exchange" {
  switch (mode) {
    case AudienceTokenMode.UNSPECIFIED:
      return "";
    case AudienceTokenMode.REFRESH:
      return "refresh";
    case AudienceTokenMode.EXCHANGE:
      return "exchange";
    default:
      throw new InvalidArgumentError("audience_tokens", "is not a known AudienceTokenMode");
  }
}

const MODES: Record<ProviderRegistrationMode, RegistrationMode> = {
  [ProviderRegistrationMode.UNSPECIFIED]: "",
  [ProviderRegistrationMode.AUTO]: "auto",
  [ProviderRegistrationMode.STATIC]: "static",
  [ProviderRegistrationMode.CIMD]: "cimd",
  [ProviderRegistrationMode.DYNAMIC]: "dynamic",
};

function registrationModeOf(mode: ProviderRegistrationMode): RegistrationMode {
  const known = MODES[mode] as RegistrationMode | undefined;
  if (known === undefined) throw new InvalidArgumentError("registration", "is not a known ProviderRegistrationMode");
  return known;
}

const REGISTRATIONS = {
  static: ProviderRegistration.STATIC,
  dynamic: ProviderRegistration.DYNAMIC,
  cimd: ProviderRegistration.CIMD,
} as const;

function toProto(p: ProviderView): Provider {
  return create(ProviderSchema, {
    id: p.id,
    issuer: p.issuer,
    resourceUrl: p.resourceUrl ?? "",
    clientId: p.clientId,
    clientAuthMethod: p.clientAuthMethod,
    source: p.source === "config" ? ProviderSource.CONFIG : ProviderSource.RUNTIME,
    registration: REGISTRATIONS[p.registration],
    endpoints: {
      authorizationEndpoint: p.endpoints.authorization ?? "",
      tokenEndpoint: p.endpoints.token ?? "",
      revocationEndpoint: p.endpoints.revocation ?? "",
      registrationEndpoint: p.endpoints.registration ?? "",
      jwksUri: p.endpoints.jwks ?? "",
    },
    createdAt: timestampFromDate(p.createdAt),
    defaultResource: p.defaultResource ?? "",
    scopes: p.scopes,
    refreshScopes: p.refreshScopes,
    challengeScopes: p.challengeScopes,
    scopesSupported: p.scopesSupported,
    redirectUris: p.redirectUris,
    allowInsecureHttp: p.allowInsecureHttp,
    openid: p.openid,
    audienceTokens: p.audienceTokens === "exchange" ? AudienceTokenMode.EXCHANGE : AudienceTokenMode.REFRESH,
    kind: p.kind === "enterprise_managed" ? ProviderKind.ENTERPRISE_MANAGED : ProviderKind.OAUTH,
    enterpriseIdp: p.enterpriseIdp ?? "",
  });
}

/**
 * The ProviderService RPCs: proto in, domain call, proto out. A caller with
 * a `providers` scope may only register, see and delete those providers.
 */
export function createProviderServiceHandlers(admin: ProviderAdmin): ServiceHandlers<typeof ProviderService> {
  return {
    async registerProvider(req, ctx) {
      if (req.id !== "") requireProviderAllowed(ctx, req.id);
      const view = await admin.register(
        {
          id: req.id,
          issuer: req.issuer,
          resourceUrl: req.resourceUrl,
          clientId: req.clientId,
          clientSecret: req.clientSecret,
          clientAuthMethod: req.clientAuthMethod,
          dynamicRegistration: req.dynamicRegistration,
          redirectUris: req.redirectUris,
          scopes: req.scopes,
          refreshScopes: req.refreshScopes,
          allowInsecureHttp: req.allowInsecureHttp,
          publicUrl: req.publicUrl,
          audienceTokens: audienceModeOf(req.audienceTokens),
          exchangeTarget: req.exchangeTarget,
          registration: registrationModeOf(req.registration),
          assumePkce: req.assumePkce,
          kind: req.kind === ProviderKind.ENTERPRISE_MANAGED ? "enterprise_managed" : "",
          enterpriseIdp: req.enterpriseIdp,
          resource: req.resource,
        },
        ctx,
      );
      return create(RegisterProviderResponseSchema, { provider: toProto(view) });
    },

    async listProviders(_req, ctx) {
      const all = await admin.list();
      const visible = ctx.providers ? all.filter((p) => ctx.providers!.has(p.id)) : all;
      return create(ListProvidersResponseSchema, { providers: visible.map(toProto) });
    },

    async deleteProvider(req, ctx) {
      if (req.id !== "") requireProviderAllowed(ctx, req.id);
      const revoked = await admin.delete(req.id, req.revokeSessions, ctx);
      return create(DeleteProviderResponseSchema, { sessionsRevoked: revoked });
    },
  };
}
