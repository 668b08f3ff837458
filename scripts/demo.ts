/**
 * `npm run demo`: a local identity provider and the token service on the
 * embedded default, then one user's session through store, get, expiry,
 * refresh (one refresh for many callers) and revoke; then a second user who
 * connects a tool server through the code flow the service runs itself; then
 * a third whose tool calls on two MCP servers each get a token for that
 * server only; then a fourth whose session is stepped up in place when a
 * tool server asks for more scopes, and a fifth whose enterprise IdP login
 * reaches a tool server with no browser step (ID-JAG), and a sixth whose
 * gateway prompts her to reconnect because an event said her session died.
 * Prints each step and exits 0, or 1 at the first surprise.
 */
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { setTimeout as sleep } from "node:timers/promises";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { stringify } from "yaml";
import { ErrorInfoSchema } from "../gen/google/rpc/error_details_pb.js";
import { ProviderKind, ProviderService, TokenKind } from "../gen/tokenservice/v1/token_service_pb.js";
import { createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { callTool } from "../examples/chat-gateway/tools.js";
import { startMcpServer } from "../test/helpers/mcp-server.js";
import { startProtectedResource } from "../test/helpers/protected-resource.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import { startEnterpriseIdp, startMcpAuthorizationServer } from "../test/helpers/id-jag.js";
import { type TestProvider } from "../test/helpers/oidc-provider.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { reconnectPromptStep } from "./demo-reconnect.js";

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
let step = 0;
const say = (title: string) => console.log(`\n${bold(`${++step}. ${title}`)}`);
const info = (line: string) => console.log(`   ${line}`);
/** A token shown as its length and first characters: enough to tell two apart, never usable. */
const peek = (token: string) => `${token.slice(0, 8)}… (${token.length} chars)`;
function check(ok: boolean, what: string): void {
  if (!ok) throw new Error(`unexpected: ${what}`);
}

const dir = mkdtempSync(join(tmpdir(), "token-service-demo-"));
let provider: TestProvider | undefined;
let service: ServiceProcess | undefined;
try {
  say("Start a local OpenID Connect provider (oidc-provider, refresh-token rotation on; it also issues ID-JAGs)");
  provider = await startEnterpriseIdp({ clientIdAt: () => "mcp-client", resourceScopes: ["mcp:admin"] });
  info(`issuer ${provider.issuer}, client id ${provider.clientId}`);

  say("Start the token service on the embedded default (SQLite, generated key file)");
  const config = join(dir, "config.yaml");
  writeFileSync(
    config,
    stringify({
      providers: [
        { ...provider.configEntry("demo"), refresh_margin_seconds: 60 },
      ],
      // Background refresh would renew the 3-second token before the callers ask; this demo shows
      // the refresh on demand. (In production it keeps recently used tokens fresh so callers never wait.)
      refresh: { background: { enabled: false } },
      // A development set-up: the provider and the tool server below are on localhost over plain http,
      // which the outbound policy refuses for runtime providers unless the operator allows it (docs/security.md).
      outbound: { allow_private_networks: true, allow_insecure_http: true },
      log_level: "warn",
    }),
  );
  service = await spawnService({ TOKEN_SERVICE_CONFIG: config, TOKEN_SERVICE_LOG_LEVEL: "info" }, { cwd: dir });
  const started = service.lines().find((l) => l.msg === "token service listening")!;
  info(`listening on ${service.url} (gRPC) and ${service.httpUrl ?? "no HTTP listener"} (Connect, gRPC-Web); database ${String(started.database)}`);
  const client = connectGrpcClient(service.url);

  say("Alice logs in at the provider; her auth gateway hands the token set to StoreSession");
  const tokens = await provider.login("alice");
  info(`the provider issued an access token ${peek(tokens.access_token)}, a refresh token and an id_token`);
  const stored = await client.storeSession({
    userId: "alice",
    provider: "demo",
    tokens: {
      accessToken: tokens.access_token,
      refreshToken: tokens.refresh_token,
      idToken: tokens.id_token,
      tokenType: tokens.token_type,
      scope: tokens.scope,
      // Pretend the access token has 3 seconds left, to see the refresh without waiting minutes.
      expiresIn: 3n,
    },
  });
  info(`StoreSession → session id ${stored.sessionId.slice(0, 8)}… (the gateway keeps only this)`);
  info(`the service holds the tokens encrypted; access token expires ${timestampDate(stored.expiresAt!).toISOString()}`);

  say("A backend service asks for Alice's token (GetToken)");
  const first = await client.getToken({ userId: "alice", sessionId: stored.sessionId, minValidSeconds: 1 });
  check(first.token === tokens.access_token, "GetToken should return the stored token");
  info(`GetToken → ${peek(first.token)}: the stored token, still valid, no call to the provider`);
  const byUser = await client.getToken({ userId: "alice", provider: "demo", minValidSeconds: 1 });
  info(`by user and provider (a background job without a session id) → session ${byUser.sessionId.slice(0, 8)}…, same token`);
  const id = await client.getToken({ userId: "alice", sessionId: stored.sessionId, kind: TokenKind.ID });
  info(`the id_token is there too: ${peek(id.token)}`);

  say("Wait for the access token to expire");
  for (let left = 3; left > 0; left--) {
    info(`${left}…`);
    await sleep(1000);
  }
  await sleep(200);

  say("100 callers ask at once for the expired token");
  provider.resetStats();
  provider.faults.push({ kind: "delay", ms: 300 }); // a provider taking 300 ms, so the callers really overlap
  const t0 = performance.now();
  const answers = await Promise.all(Array.from({ length: 100 }, () => client.getToken({ userId: "alice", sessionId: stored.sessionId })));
  const ms = performance.now() - t0;
  const distinct = new Set(answers.map((a) => a.token));
  check(distinct.size === 1, "every caller should get the same new token");
  check(!distinct.has(tokens.access_token), "the token should have been refreshed");
  check(provider.stats.refreshes === 1, `one refresh at the provider, saw ${provider.stats.refreshes}`);
  info(`all 100 got the same new token ${peek(answers[0]!.token)} in ${Math.round(ms)} ms`);
  info(`the provider saw ${provider.stats.refreshes} refresh request: one refresh served every caller`);
  info("the provider rotated the refresh token; the service stored the new one before answering anyone");

  say("List Alice's sessions (metadata only, never tokens)");
  const list = await client.listSessions({ userId: "alice" });
  for (const s of list.sessions) {
    info(`${s.sessionId.slice(0, 8)}…  provider ${s.provider}  key ${s.keyId}  expires ${timestampDate(s.accessExpiresAt!).toISOString()}`);
  }

  say("Alice logs out: RevokeSession, here and at the provider");
  await client.revokeSession({ userId: "alice", sessionId: stored.sessionId });
  const after = await client.getToken({ userId: "alice", sessionId: stored.sessionId }).catch((e: unknown) => e);
  check(after instanceof ConnectError && after.code === Code.NotFound, "GetToken after revoke should be NOT_FOUND");
  info(`GetToken now → ${Code[(after as ConnectError).code]} (${(after as ConnectError).findDetails(ErrorInfoSchema)[0]?.reason})`);
  const introspected = await provider.introspect(tokens.refresh_token);
  check(!introspected.active, "the provider should no longer accept the grant");
  info("the provider confirms: the grant is revoked (RFC 7009)");

  say("Bob connects a tool server himself: the service runs the code flow (PKCE), the gateway never sees a token");
  const providers = createClient(ProviderService, createGrpcTransport({ baseUrl: service.url }));
  const resource = await startProtectedResource(provider.issuer);
  try {
    const registered = await providers.registerProvider({
      id: "tools",
      resourceUrl: resource.url,
      dynamicRegistration: true,
      redirectUris: [provider.redirectUri],
      allowInsecureHttp: true,
    });
    const p = registered.provider!;
    info(`RegisterProvider from the MCP server's URL ${resource.url}`);
    info(`→ RFC 9728 metadata names the authorization server ${p.issuer}; client ${p.clientId} registered dynamically (RFC 7591)`);
    const start = await client.startAuthorization({ userId: "bob", provider: "tools", redirectUri: provider.redirectUri });
    const url = new URL(start.authorizationUrl);
    info(`StartAuthorization → send the browser to ${url.origin}${url.pathname}?… (code_challenge ${url.searchParams.get("code_challenge_method")}, resource ${url.searchParams.get("resource")})`);
    const callbackUrl = await provider.authorize(start.authorizationUrl, "bob");
    info(`Bob logs in and consents; the browser comes back to ${new URL(callbackUrl).origin}${new URL(callbackUrl).pathname}?code=…&state=…&iss=…`);
    const connected = await client.completeAuthorization({ userId: "bob", callbackUrl });
    info(`CompleteAuthorization → session ${connected.sessionId.slice(0, 8)}… at ${connected.provider}: state checked once, code exchanged with the PKCE verifier, ID token checked`);
    const toolToken = await client.getToken({ userId: "bob", sessionId: connected.sessionId });
    const aud = JSON.parse(Buffer.from(toolToken.token.split(".")[1]!, "base64url").toString()) as { aud?: unknown };
    check(aud.aud === resource.url, "the token should be for the tool server");
    info(`GetToken → ${peek(toolToken.token)}, a token whose audience is the tool server (${String(aud.aud)})`);
    const replay = await client.completeAuthorization({ userId: "bob", callbackUrl }).catch((e: unknown) => e);
    check(replay instanceof ConnectError && replay.findDetails(ErrorInfoSchema)[0]?.reason === "INVALID_STATE", "a replayed callback should be refused");
    info("the same callback again → FAILED_PRECONDITION (INVALID_STATE): a state is good once");
  } finally {
    await resource.close();
  }

  say("Carol's tool calls on two MCP servers, each with a token for that server only (RFC 8707)");
  const [search, files] = await Promise.all([startMcpServer(provider.issuer, "search"), startMcpServer(provider.issuer, "files")]);
  try {
    const carol = await provider.login("carol", { resources: [search.url, files.url] });
    const session = await client.storeSession({
      userId: "carol",
      provider: "demo",
      tokens: { accessToken: carol.access_token, refreshToken: carol.refresh_token, expiresIn: BigInt(carol.expires_in) },
      resources: [search.url, files.url],
    });
    info(`StoreSession with resources ${search.url} and ${files.url} (what her login was granted)`);
    provider.resetStats();
    for (const server of [search, files]) {
      const got = await client.getToken({ userId: "carol", sessionId: session.sessionId, resource: server.url });
      const claims = JSON.parse(Buffer.from(got.token.split(".")[1]!, "base64url").toString()) as { aud?: unknown };
      check(claims.aud === server.url, `the token should be for ${server.url}`);
      const call = await callTool(server.url, got.token, "whoami", {}, 10_000);
      check(call.kind === "result", `the tool call on ${server.url} should succeed`);
      info(`GetToken resource ${server.url} → ${peek(got.token)}, aud ${String(claims.aud)}; the MCP server accepts it`);
      if (server === search) {
        const misuse = await callTool(files.url, got.token, "whoami", {}, 10_000);
        check(misuse.kind === "refused" && misuse.status === 401, "the other server should refuse this token");
        info(`the same token sent to ${files.url} → HTTP 401: it is not for that server`);
      }
    }
    check(provider.stats.tokenRequests.length === 2, `one refresh per audience, saw ${provider.stats.tokenRequests.length}`);
    info("the provider saw one refresh-token grant per audience, each naming its resource; the session kept one refresh token");
    const ungranted = await client
      .getToken({ userId: "carol", sessionId: session.sessionId, resource: "https://not-granted.example.com/mcp" })
      .catch((e: unknown) => e);
    check(ungranted instanceof ConnectError && ungranted.findDetails(ErrorInfoSchema)[0]?.reason === "RESOURCE_NOT_GRANTED", "an ungranted resource should be refused");
    check(provider.stats.tokenRequests.length === 2, "an ungranted resource should never reach the provider");
    info("a resource her login was not granted → FAILED_PRECONDITION (RESOURCE_NOT_GRANTED), without asking the provider");
    const [listed] = (await client.listSessions({ userId: "carol" })).sessions;
    for (const t of listed!.audienceTokens) info(`ListSessions: audience token for ${t.resource}, expires ${timestampDate(t.expiresAt!).toISOString()}`);
  } finally {
    await Promise.all([search.close(), files.close()]);
  }

  say("Dana's tool server asks for more (403 insufficient_scope): a step-up, and her session id stays the same");
  const adminServer = await startMcpServer(provider.issuer, "admin", { challengeScope: "mcp:tools", toolScopes: { admin: ["mcp:tools", "mcp:admin"] } });
  try {
    const secret = provider.clientSecret;
    await providers.registerProvider({ id: "admin-tools", resourceUrl: adminServer.url, clientId: provider.clientId, clientSecret: secret, redirectUris: [provider.redirectUri], allowInsecureHttp: true });
    const ask = { userId: "dana", provider: "admin-tools", redirectUri: provider.redirectUri };
    const first = await client.startAuthorization(ask);
    info(`StartAuthorization asks for "${first.scopes.join(" ")}": the scope of the server's 401 challenge (offline_access added)`);
    const dana = await client.completeAuthorization({ userId: "dana", callbackUrl: await provider.authorize(first.authorizationUrl, "dana") });
    const before = await client.getToken({ userId: "dana", sessionId: dana.sessionId, resource: adminServer.url });
    const refused = await callTool(adminServer.url, before.token, "admin", {}, 10_000);
    check(refused.kind === "refused" && refused.status === 403 && refused.challenge !== undefined, "the admin tool should need a step-up");
    const challenge = (refused as { challenge: string }).challenge;
    info(`tool "admin" → HTTP 403, WWW-Authenticate: ${challenge.slice(0, 64)}…`);
    const up = await client.startAuthorization({ ...ask, sessionId: dana.sessionId, challenge });
    info(`StartAuthorization with that challenge and her session id asks for "${up.scopes.join(" ")}"`);
    const done = await client.completeAuthorization({ userId: "dana", callbackUrl: await provider.authorize(up.authorizationUrl, "dana") });
    check(done.steppedUp && done.sessionId === dana.sessionId, "the step-up should keep the session id");
    const after = await client.getToken({ userId: "dana", sessionId: dana.sessionId, resource: adminServer.url });
    check((await callTool(adminServer.url, after.token, "admin", {}, 10_000)).kind === "result", "the retried call should succeed");
    info(`CompleteAuthorization → stepped up in place, same session ${done.sessionId.slice(0, 8)}…; the retried call succeeds (scope ${after.scope})`);
  } finally {
    await adminServer.close();
  }
  say("Dana's enterprise login reaches the CRM tool server with no browser step (enterprise-managed, ID-JAG)");
  const crmAs = await startMcpAuthorizationServer(provider.issuer);
  const crm = await startMcpServer(crmAs.issuer, "crm");
  try {
    const providersApi = createClient(ProviderService, createGrpcTransport({ baseUrl: service.url }));
    const managed = await providersApi.registerProvider({
      id: "crm",
      kind: ProviderKind.ENTERPRISE_MANAGED,
      enterpriseIdp: "demo",
      resourceUrl: crm.url,
      clientId: crmAs.clientId,
      clientSecret: crmAs.clientSecret,
      allowInsecureHttp: true,
    });
    info(`RegisterProvider kind ENTERPRISE_MANAGED: the CRM's authorization server ${managed.provider!.issuer} trusts the IdP "demo" and advertises the ID-JAG profile`);
    const dana = await provider.login("dana");
    await client.storeSession({ userId: "dana", provider: "demo", tokens: { accessToken: dana.access_token, refreshToken: dana.refresh_token, idToken: dana.id_token, expiresIn: BigInt(dana.expires_in) } });
    info("Dana signed in at the enterprise IdP once (StoreSession with her ID token); she never visits the CRM's authorization server");
    provider.resetStats();
    crmAs.resetStats();
    const got = await client.getToken({ userId: "dana", provider: "crm" });
    const call = await callTool(crm.url, got.token, "whoami", {}, 10_000);
    check(call.kind === "result", "the CRM should accept the token");
    check(provider.stats.tokenRequests.length === 1 && crmAs.stats.tokenRequests.length === 1, "one exchange at the IdP and one grant at the authorization server");
    info(`GetToken provider crm → ${peek(got.token)}; the CRM's MCP server accepts it`);
    info("behind it: her ID token exchanged at the IdP for an ID-JAG (RFC 8693), redeemed at the CRM's authorization server (RFC 7523)");
    const again = await client.getToken({ userId: "dana", provider: "crm" });
    check(again.token === got.token && crmAs.stats.tokenRequests.length === 1, "the token should be held");
    info("asked again → the same token, held sealed beside her IdP session; nobody was asked");
    await client.revokeUserSessions({ userId: "dana" });
    const gone = await client.getToken({ userId: "dana", provider: "crm" }).catch((e: unknown) => e);
    const reason = gone instanceof ConnectError ? gone.findDetails(ErrorInfoSchema)[0]?.reason : undefined;
    check(reason === "NO_IDP_SESSION", "without the IdP session there is no CRM token");
    info(`her IdP session revoked → the CRM token is gone with it; GetToken → FAILED_PRECONDITION (${reason})`);
  } finally {
    await Promise.all([crm.close(), crmAs.close()]);
  }

  say("Erin's session dies; her gateway hears it from an event and prompts her to reconnect (connection health)");
  await reconnectPromptStep({ client, httpUrl: service.httpUrl!, provider, providerId: "demo", info, check });

  say("Stop the service: SIGTERM drains in-flight calls, then it exits");
  service.kill("SIGTERM");
  const code = await service.exited;
  check(code === 0, `the service should exit 0, got ${code}`);
  info("exited 0");
  console.log(`\n${bold("Demo complete.")} Run it for real with \`npm start\`; see README.md.`);
} catch (err) {
  console.error(`\ndemo failed: ${err instanceof Error ? err.message : String(err)}`);
  if (service) console.error(service.stderr().slice(-2000));
  process.exitCode = 1;
} finally {
  service?.kill("SIGKILL");
  await provider?.close();
  rmSync(dir, { recursive: true, force: true });
}
