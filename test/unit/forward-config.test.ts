import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { planReload } from "../../src/reload/plan.js";
import { callerHeaders, upstreamHeaders } from "../../src/forward/headers.js";
import { splitForwardUrl } from "../../src/forward/request.js";

/** `forward:` and `forward_settings:` as loadConfig checks them, the header rules, and the route's path rule. */

const dir = mkdtempSync(join(tmpdir(), "forward-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
const KEY = "sk-secret-key-material-42";
writeFileSync(join(dir, "key"), `${KEY}\n`);
writeFileSync(join(dir, "empty"), "\n");

const provider = { id: "corp", issuer: "https://login.example.com", client_id: "c", client_secret: "s" };
const load = (forward: unknown[], extra: Record<string, unknown> = {}) => {
  writeFileSync(join(dir, "config.yaml"), stringify({ providers: [provider], forward, ...extra }));
  return loadConfig({ TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"), DATABASE_URL: `sqlite:${join(dir, "db")}` }, dir);
};
const target = (fields: Record<string, unknown> = {}) => ({ id: "models", url: "https://llm.internal/v1/", provider: "corp", ...fields });

describe("forward: configuration", () => {
  it("reads a target: the base URL without its trailing slash, the key file trimmed and watched, the defaults", () => {
    const config = load([target({ fallback_key_file: "key", resource: "https://llm.internal" })]);
    expect(config.forward.replayMaxBytes).toBe(1024 * 1024);
    expect(config.forward.targets[0]).toMatchObject({
      id: "models",
      url: "https://llm.internal/v1",
      provider: "corp",
      resource: "https://llm.internal",
      fallbackKey: KEY,
      header: "authorization",
      connectTimeoutMs: 5000,
      firstByteTimeoutMs: 60000,
    });
    expect(config.files).toContain(join(dir, "key"));
  });

  it.each([
    ["a duplicate id", [target(), target()], /forward\[1\]\.id: duplicate forward target id "models"/],
    ["an id that is not one path segment", [target({ id: "a/b" })], /forward\[0\]\.id/],
    ["an unknown provider", [target({ provider: "nope" })], /forward\[0\]\.provider: "nope" is not a provider of this file/],
    ["plain http", [target({ url: "http://llm.internal/v1" })], /forward\[0\]\.url: must use https/],
    ["plain http to another host, even when allowed", [target({ url: "http://llm.internal/v1", allow_insecure_http: true })], /only allowed for a loopback host/],
    ["a URL with credentials", [target({ url: "https://u:p@llm.internal/v1" })], /must not hold credentials/],
    ["a resource with a query", [target({ resource: "https://llm.internal/?x=1" })], /forward\[0\]\.resource/],
    ["a missing key file", [target({ fallback_key_file: "missing" })], /forward\[0\]\.fallback_key_file: cannot read missing \(ENOENT\)/],
    ["an empty key file", [target({ fallback_key_file: "empty" })], /the file is empty/],
    ["a hop-by-hop header", [target({ header: "connection" })], /forward\[0\]\.header/],
    ["a header the proxy owns", [target({ header: "x-token-service-user" })], /forward\[0\]\.header/],
    ["a header name with a space", [target({ header: "api key" })], /forward\[0\]\.header/],
    ["a CA file without certificates", [target({ ca_file: "key" })], /forward\[0\]\.ca_file: must hold PEM certificates/],
  ])("refuses %s, naming the field and never the key", (_what, forward, message) => {
    let error: Error | undefined;
    try {
      load(forward);
    } catch (err) {
      error = err as Error;
    }
    expect(error?.message).toMatch(message);
    expect(error?.message).not.toContain(KEY);
  });

  it("allows plain http to a loopback host with allow_insecure_http", () => {
    expect(load([target({ url: "http://127.0.0.1:8080/v1", allow_insecure_http: true })]).forward.targets[0]!.url).toBe("http://127.0.0.1:8080/v1");
  });

  it("is applied by a reload: added, changed and removed targets, and replay_max_bytes", () => {
    const before = load([target()]);
    const plan = planReload(before, load([target({ first_byte_timeout_ms: 1000 }), target({ id: "tools" })]));
    expect(plan.forward).toEqual({ added: ["tools"], removed: [], changed: ["models"] });
    expect(plan.changed && plan.needsRestart.length === 0).toBe(true);
    expect(plan.config.forward.targets.map((t) => t.id)).toEqual(["models", "tools"]);
    const settings = planReload(before, load([target()], { forward_settings: { replay_max_bytes: 10 } }));
    expect(settings.forwardChanged).toBe(true);
    expect(settings.config.forward.replayMaxBytes).toBe(10);
  });
});

describe("forwarded headers", () => {
  it("drops the caller's credentials, cookies, x-token-service-* and hop-by-hop fields, and the ones Connection names", () => {
    const out = upstreamHeaders(
      {
        authorization: "Bearer caller",
        cookie: "a=b",
        connection: "close, x-hop",
        "x-hop": "1",
        "keep-alive": "timeout=5",
        te: "trailers",
        "transfer-encoding": "chunked",
        upgrade: "h2c",
        "proxy-authorization": "Basic x",
        "x-token-service-user": "alice",
        "x-token-service-session": "s",
        "x-user-assertion": "jwt",
        host: "proxy",
        "content-type": "application/json",
        accept: "text/event-stream",
      },
      "authorization",
      "user-token",
    );
    expect(out).toEqual({ authorization: "Bearer user-token", "content-type": "application/json", accept: "text/event-stream" });
    expect(upstreamHeaders({ authorization: "Bearer caller" }, "api-key", "k")).toEqual({ "api-key": "k" });
    expect(upstreamHeaders({ "content-length": "12" }, "authorization", undefined)).toEqual({ "content-length": "12" });
  });

  it("sends back the upstream's end-to-end headers, without its cookies", () => {
    expect(callerHeaders({ "content-type": "text/event-stream", "set-cookie": ["a=b"], connection: "keep-alive", "keep-alive": "timeout=5", "www-authenticate": "Bearer" })).toEqual({
      "content-type": "text/event-stream",
      "www-authenticate": "Bearer",
    });
  });
});

describe("the forward path", () => {
  it.each([
    ["/forward/models/chat/completions?x=1", { target: "models", rest: "/chat/completions?x=1" }],
    ["/forward/models", { target: "models", rest: "" }],
    ["/forward/models?x=1", { target: "models", rest: "/?x=1" }],
    ["/forward/models/a/../../admin", undefined],
    ["/forward/models/%2e%2e/admin", undefined],
    ["/forward/models/a%2Fb", undefined],
    ["/forward/models/%zz", undefined],
  ])("%s", (url, expected) => {
    expect(splitForwardUrl(url)).toEqual(expected);
  });
});
