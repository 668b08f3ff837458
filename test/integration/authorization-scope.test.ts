import { createHash } from "node:crypto";
import { Code } from "@connectrpc/connect";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { connectGrpcClient } from "../helpers/clients.js";
import { failure } from "../helpers/failure.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
const ALL = "all-providers-credential-0123456789";
const OTHER_ONLY = "other-only-credential-9876543210";

/**
 * CompleteAuthorization checks the caller's provider scope before it uses
 * the state up: a caller outside the state's provider is refused, and the
 * state stays usable by one allowed to complete it.
 */
describe("CompleteAuthorization and the caller's provider scope", () => {
  let provider: TestProvider;
  let svc: TestService;

  beforeAll(async () => {
    provider = await startTestProvider();
    svc = await startService({
      dialect: "sqlite",
      yaml: {
        providers: [provider.configEntry("corp"), provider.configEntry("other")],
        callers: [
          { name: "all", token_sha256: sha256(ALL), rpcs: ["*"] },
          { name: "other-only", token_sha256: sha256(OTHER_ONLY), rpcs: ["*"], providers: ["other"] },
        ],
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  it("refuses a caller without the state's provider, and the state then completes for one with it", async () => {
    const all = connectGrpcClient(svc.url, { bearer: ALL });
    const otherOnly = connectGrpcClient(svc.url, { bearer: OTHER_ONLY });
    const started = await all.startAuthorization({ userId: "wendy", provider: "corp", redirectUri: provider.redirectUri });
    const callbackUrl = await provider.authorize(started.authorizationUrl, "wendy");
    expect((await failure(otherOnly.completeAuthorization({ userId: "wendy", callbackUrl }))).code).toBe(Code.PermissionDenied);
    const done = await all.completeAuthorization({ userId: "wendy", callbackUrl });
    expect(done.provider).toBe("corp");
    expect((await all.getToken({ userId: "wendy", sessionId: done.sessionId })).token).not.toBe("");
    // Used now: a second completion is a replay.
    expect((await failure(all.completeAuthorization({ userId: "wendy", callbackUrl }))).reason).toBe("INVALID_STATE");
    const denied = svc.logs.lines().filter((l) => l.audit === true && l.caller === "other-only");
    expect(denied.length).toBeGreaterThan(0);
    expect(svc.logs.text()).not.toContain(started.state);
  });
});
