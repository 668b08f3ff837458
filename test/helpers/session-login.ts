import type { Client } from "@connectrpc/connect";
import type { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";
import type { TestProvider, TestTokenSet } from "./oidc-provider.js";

/** Logs `user` in at the test provider (granted `resources`, if any) and stores the token set as a session at `provider`. */
export async function loginAndStore(
  provider: TestProvider,
  tokens: Pick<Client<typeof TokenService>, "storeSession">,
  user: string,
  resources: string[] = [],
  providerId = "corp",
): Promise<{ sessionId: string; set: TestTokenSet }> {
  const set = await provider.login(user, resources.length ? { resources } : {});
  const stored = await tokens.storeSession({
    userId: user,
    provider: providerId,
    tokens: { accessToken: set.access_token, refreshToken: set.refresh_token, idToken: set.id_token, expiresIn: BigInt(set.expires_in) },
    resources,
  });
  return { sessionId: stored.sessionId, set };
}
