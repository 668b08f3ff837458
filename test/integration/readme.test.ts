import { execFile as execFileCb } from "node:child_process";
import { existsSync, readFileSync } from "node:fs";
import { promisify } from "node:util";
import { fileURLToPath } from "node:url";
import { decodeJwt } from "jose";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { parseConfigFile } from "../../src/config.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startProtectedResource } from "../helpers/protected-resource.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * The commands the documentation shows, run as written against a live
 * service, over both listeners, from the pages where they live: the README's
 * walk-through, docs/calling.md, docs/tool-servers.md and
 * docs/audience-tokens.md. Only the addresses (the service runs on ephemeral
 * ports here) and the "…" placeholders (a real login's tokens and the session
 * id StoreSession answered) are filled in.
 */

const execFile = promisify(execFileCb);
const ROOT = fileURLToPath(new URL("../..", import.meta.url));

/** The shell commands of every ```sh block in a README section, continuation lines joined, comments dropped. */
function commandsOf(section: string): string[] {
  const blocks = [...section.matchAll(/```sh\n([\s\S]*?)```/g)].map((m) => m[1]!);
  return blocks.flatMap((block) =>
    block
      .replace(/\\\n\s*/g, "")
      .split("\n")
      .map((l) => l.trim())
      .filter((l) => l !== "" && !l.startsWith("#")),
  );
}

/** A page's text from `heading` to the next `## ` heading. */
function section(readme: string, heading: string): string {
  const start = readme.indexOf(`\n${heading}\n`);
  expect(start, heading).toBeGreaterThan(-1);
  const next = readme.indexOf("\n## ", start + heading.length + 2);
  return readme.slice(start, next === -1 ? undefined : next);
}

const page = (path: string) => readFileSync(`${ROOT}/${path}`, "utf8");

describe("the documented commands, against a live service", () => {
  let provider: TestProvider;
  let svc: TestService;
  const readme = page("README.md");
  const calling = page("docs/calling.md");
  const commands = [...commandsOf(section(calling, "## The calls")), ...commandsOf(section(calling, "## Server reflection"))];

  beforeAll(async () => {
    provider = await startTestProvider();
    // The pages' tool server is a local one over plain http: the operator allows that for runtime providers.
    svc = await startService({ dialect: "sqlite", provider, yaml: { outbound: { allow_private_networks: true, allow_insecure_http: true } } });
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
  });

  /** Runs one README command with the live addresses and the given placeholder values. */
  async function run(command: string, values: { tokens?: Record<string, string>; sessionId?: string } = {}): Promise<string> {
    let line = command
      .replaceAll("127.0.0.1:50051", new URL(svc.url).host)
      .replaceAll("127.0.0.1:50052", new URL(svc.httpUrl).host)
      .replaceAll('"Xq3…"', JSON.stringify(values.sessionId ?? ""));
    for (const [field, value] of Object.entries(values.tokens ?? {})) line = line.replace(`"${field}":"…"`, `"${field}":${JSON.stringify(value)}`);
    expect(line).not.toContain("…");
    const { stdout } = await execFile("bash", ["-c", line], {
      cwd: ROOT,
      env: { ...process.env, PATH: `${ROOT}/node_modules/.bin:${process.env.PATH ?? ""}` },
      timeout: 40_000,
    });
    return stdout;
  }

  it("finds the commands it runs", () => {
    expect(existsSync(`${ROOT}/node_modules/.bin/buf`)).toBe(true);
    expect(commands.filter((c) => c.startsWith("npx buf curl"))).toHaveLength(7);
    expect(commands.filter((c) => c.startsWith("curl "))).toHaveLength(1);
  });

  it("stores, gets and revokes with buf curl on the gRPC listener, and gets with plain curl on the HTTP listener", async () => {
    const [store, getById, getByProvider, revoke] = commands.filter((c) => c.includes("--schema proto"));
    expect(store).toContain("/StoreSession");
    expect(revoke).toContain("/RevokeSession");
    const login = await provider.login("alice");
    const tokens = { access_token: login.access_token, refresh_token: login.refresh_token, id_token: login.id_token };

    const stored = JSON.parse(await run(store!, { tokens })) as { sessionId: string; expiresAt: string };
    expect(stored.sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const byId = JSON.parse(await run(getById!, { sessionId: stored.sessionId })) as { token: string; sessionId: string };
    expect(byId).toMatchObject({ token: login.access_token, sessionId: stored.sessionId });
    const byProvider = JSON.parse(await run(getByProvider!)) as { token: string };
    expect(byProvider.token).toBe(login.access_token);

    // The plain curl example, on the HTTP listener: the same answer in the Connect protocol's JSON.
    const curl = commands.find((c) => c.startsWith("curl "))!;
    expect(curl).toContain("127.0.0.1:50052");
    const viaCurl = JSON.parse(await run(curl)) as { token: string; tokenType: string; sessionId: string };
    expect(viaCurl).toMatchObject({ token: login.access_token, tokenType: "Bearer", sessionId: stored.sessionId });

    expect(JSON.parse(await run(revoke!, { sessionId: stored.sessionId }))).toEqual({});
    // After the revoke, the same curl gets the JSON error the README describes.
    const err = await run(curl).catch((e: { stdout?: string }) => e.stdout ?? "");
    expect(JSON.parse(err)).toMatchObject({ code: "not_found", message: "session not found" });
  });

  it("walks through store, get and revoke with curl as the README shows", async () => {
    const walk = section(readme, "## Five minutes: store, get and revoke");
    // The configuration it gives is one the service accepts, with the provider the commands name.
    const yaml = /```yaml\n([\s\S]*?)```/.exec(walk)![1]!;
    expect(parseConfigFile(yaml, "walkthrough.yaml").providers.map((p) => p.id)).toEqual(["corp"]);
    const [start, store, get, revoke, getAgain, ...rest] = commandsOf(walk);
    expect(rest).toEqual([]);
    expect(start).toBe("TOKEN_SERVICE_CONFIG=walkthrough.yaml npm start");
    expect(store).toContain("/StoreSession");
    expect(revoke).toContain("/RevokeSession");
    expect(getAgain).toBe(get!.replace(',"minValidSeconds":60', ""));

    const stored = JSON.parse(await run(store!)) as { sessionId: string };
    expect(stored.sessionId).toMatch(/^[A-Za-z0-9_-]{43}$/);
    const got = JSON.parse(await run(get!, { sessionId: stored.sessionId })) as { token: string; tokenType: string; sessionId: string };
    expect(got).toEqual(expect.objectContaining({ token: "my-access-token", tokenType: "Bearer", sessionId: stored.sessionId }));
    expect(JSON.parse(await run(revoke!, { sessionId: stored.sessionId }))).toEqual({});
    const gone = await run(getAgain!, { sessionId: stored.sessionId }).catch((e: { stdout?: string }) => e.stdout ?? "");
    expect(JSON.parse(gone)).toMatchObject({ code: "not_found", message: "session not found" });
  });

  it("adds a tool server and connects a user as docs/tool-servers.md shows, with buf curl and curl", async () => {
    const steps = commandsOf(page("docs/tool-servers.md"));
    expect(steps).toHaveLength(3);
    const [register, start, complete] = steps as [string, string, string];
    const resource = await startProtectedResource(provider.issuer);
    try {
      // The README's example URLs, pointed at the local servers (plain http on loopback: allow_insecure_http).
      const local = (cmd: string) =>
        cmd
          .replaceAll("https://mcp.example.com/mcp", resource.url)
          .replaceAll("https://chat.example.com/connect/callback", provider.redirectUri)
          .replaceAll("https://tokens.example.com", svc.httpUrl)
          .replace('{"id":"tools",', '{"id":"tools","allow_insecure_http":true,');
      const registered = JSON.parse(await run(local(register))) as { provider: { id: string; issuer: string; registration: string; defaultResource: string } };
      expect(registered.provider).toMatchObject({ id: "tools", issuer: provider.issuer, registration: "PROVIDER_REGISTRATION_DYNAMIC", defaultResource: resource.url });
      const started = JSON.parse(await run(local(start))) as { authorizationUrl: string; state: string };
      expect(new URL(started.authorizationUrl).searchParams.get("resource")).toBe(resource.url);
      const callbackUrl = await provider.authorize(started.authorizationUrl, "alice");
      const finish = local(complete).replace(/"callbackUrl":"[^"]*"/, `"callbackUrl":${JSON.stringify(callbackUrl)}`);
      const done = JSON.parse(await run(finish)) as { sessionId: string; provider: string };
      expect(done).toMatchObject({ provider: "tools" });
      expect((await svc.client.getToken({ userId: "alice", sessionId: done.sessionId })).token).not.toBe("");

      // docs/audience-tokens.md: the curl with `resource`, for the tool server the login was granted.
      const audienceCommands = commandsOf(page("docs/audience-tokens.md"));
      expect(audienceCommands).toHaveLength(1);
      const [audience] = audienceCommands;
      const forServer = JSON.parse(await run(audience!.replaceAll("https://search.example.com/mcp", resource.url))) as { token: string; sessionId: string };
      expect(forServer.sessionId).toBe(done.sessionId);
      expect(decodeJwt(forServer.token).aud).toBe(resource.url);
    } finally {
      await resource.close();
    }
  });

  it("lists services and methods and calls GetToken through reflection, with no proto files at hand", async () => {
    const reflect = commands.filter((c) => c.startsWith("npx buf curl") && !c.includes("--schema"));
    expect(reflect).toHaveLength(3);
    const services = await run(reflect.find((c) => c.includes("--list-services"))!);
    expect(services.split("\n")).toEqual(expect.arrayContaining(["tokenservice.v1.TokenService", "grpc.health.v1.Health"]));
    const methods = await run(reflect.find((c) => c.includes("--list-methods"))!);
    expect(methods).toContain("tokenservice.v1.TokenService/GetToken");
    const login = await provider.login("alice");
    await svc.client.storeSession({ userId: "alice", provider: "corp", tokens: { accessToken: login.access_token, expiresIn: 300n } });
    const call = reflect.find((c) => c.includes("-d "))!;
    expect(JSON.parse(await run(call))).toMatchObject({ token: login.access_token });
  });
});
