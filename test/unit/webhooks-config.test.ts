import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, describe, expect, it } from "vitest";
import { ConfigError, loadConfig, type Config } from "../../src/config.js";
import { planReload } from "../../src/reload/plan.js";
import { retryDelayMs, retryAfterMs } from "../../src/webhooks/backoff.js";
import { signWebhook } from "../../src/webhooks/signer.js";
import { Webhook } from "standardwebhooks";

const dir = mkdtempSync(join(tmpdir(), "webhooks-config-"));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const GOOD = `whsec_${Buffer.alloc(32, 9).toString("base64")}`;
writeFileSync(join(dir, "good.secret"), `${GOOD}\n`);

function load(yaml: string): Config {
  writeFileSync(join(dir, "config.yaml"), yaml);
  return loadConfig({ TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"), DATABASE_URL: `sqlite:${join(dir, "db")}` }, dir);
}

const hook = (over: Record<string, unknown> = {}) => ({ id: "crm", url: "https://crm.example.com/hooks", events: ["*"], secret_file: "good.secret", ...over });
const yamlOf = (endpoints: unknown[], extra = "") => `webhooks: ${JSON.stringify(endpoints)}\n${extra}`;

describe("webhooks configuration", () => {
  it("takes the short list form and the block form, with the defaults", () => {
    const a = load(yamlOf([hook()]));
    expect(a.webhooks.endpoints).toEqual([{ id: "crm", url: "https://crm.example.com/hooks", events: ["*"], secrets: [Buffer.alloc(32, 9)] }]);
    expect(a.webhooks.maxAgeMs).toBe(86_400_000);
    const b = load(`webhooks:\n  max_age_seconds: 60\n  endpoints: ${JSON.stringify([hook()])}\n`);
    expect(b.webhooks.maxAgeMs).toBe(60_000);
    expect(b.files).toContain(join(dir, "good.secret"));
  });

  it("refuses duplicate ids, plain http outside the outbound policy, unknown event kinds and a lease shorter than an attempt", () => {
    expect(() => load(yamlOf([hook(), hook()]))).toThrow(/webhooks\.endpoints\[1\]\.id: duplicate webhook id "crm"/);
    expect(() => load(yamlOf([hook({ url: "http://127.0.0.1:8080/h" })]))).toThrow(/url: must use https/);
    expect(() => load(yamlOf([hook({ url: "http://crm.example.com/h" })], "outbound: { allow_insecure_http: true }"))).toThrow(/must use https/);
    expect(load(yamlOf([hook({ url: "http://127.0.0.1:8080/h" })], "outbound: { allow_insecure_http: true }")).webhooks.endpoints[0]!.url).toBe("http://127.0.0.1:8080/h");
    expect(load(yamlOf([hook({ url: "http://crm.internal:81/h" })], "outbound: { allow_insecure_http: true, allow_hosts: ['crm.internal:81'] }")).webhooks.endpoints).toHaveLength(1);
    expect(() => load(yamlOf([hook({ url: "https://user:pw@crm.example.com/h" })]))).toThrow(/credentials/);
    expect(() => load(yamlOf([hook({ events: ["session.exploded"] })]))).toThrow(/not an event kind/);
    expect(() => load(`webhooks: { timeout_seconds: 30, lease_seconds: 30 }`)).toThrow(/lease_seconds: must exceed webhooks.timeout_seconds/);
  });

  it("refuses a secret file that is missing or not a whsec_ secret of 24 to 64 bytes, without quoting it", () => {
    expect(() => load(yamlOf([hook({ secret_file: "missing.secret" })]))).toThrow(/secret_file: cannot read missing.secret \(ENOENT\)/);
    const cases: Array<[string, RegExp]> = [
      ["s3cr3t-value-plain", /must start with whsec_/],
      ["whsec_not*base64!", /standard base64/],
      [`whsec_${Buffer.alloc(16, 1).toString("base64")}`, /24 to 64 bytes \(it encodes 16\)/],
      [`whsec_${Buffer.alloc(65, 1).toString("base64")}`, /24 to 64 bytes \(it encodes 65\)/],
      [`${GOOD}\nwhsec_short`, /line 2 must be whsec_ followed by standard base64/],
    ];
    for (const [value, message] of cases) {
      writeFileSync(join(dir, "bad.secret"), value);
      let err: unknown;
      try {
        load(yamlOf([hook({ secret_file: "bad.secret" })]));
      } catch (e) {
        err = e;
      }
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(message);
      expect((err as Error).message).not.toContain(value);
    }
  });

  it("is applied by a reload, endpoints and settings alike", () => {
    const before = load(yamlOf([hook()]));
    const after = load(yamlOf([hook(), hook({ id: "ops", events: ["session.revoked"] })]));
    const plan = planReload(before, after);
    expect(plan.webhooks).toMatchObject({ added: ["ops"], removed: [], changed: [], settings: false });
    expect(plan.changed).toBe(true);
    expect(plan.needsRestart).toEqual([]);
    expect(plan.config.webhooks.endpoints.map((e) => e.id)).toEqual(["crm", "ops"]);
  });
});

describe("the signer and the retry schedule", () => {
  it("signs id.timestamp.body as the standardwebhooks package verifies", () => {
    const at = new Date();
    const body = JSON.stringify({ type: "session.revoked", timestamp: at.toISOString(), data: { user_id: "u" } });
    const headers = signWebhook([Buffer.alloc(32, 9)], "msg_abc", at, body);
    expect(headers["webhook-timestamp"]).toBe(String(Math.floor(at.getTime() / 1000)));
    expect(new Webhook(GOOD).verify(body, { ...headers })).toEqual(JSON.parse(body));
  });

  it("signs with every secret of the file during a rotation, so receivers with the old or the new one verify", () => {
    const next = `whsec_${Buffer.alloc(48, 5).toString("base64")}`;
    writeFileSync(join(dir, "rotating.secret"), `${next}\n${GOOD}\n`);
    const [endpoint] = load(yamlOf([hook({ secret_file: "rotating.secret" })])).webhooks.endpoints;
    expect(endpoint!.secrets).toEqual([Buffer.alloc(48, 5), Buffer.alloc(32, 9)]);
    const at = new Date();
    const headers = signWebhook(endpoint!.secrets, "msg_rot", at, "{}");
    expect(headers["webhook-signature"].split(" ")).toHaveLength(2);
    for (const secret of [next, GOOD]) expect(new Webhook(secret).verify("{}", { ...headers })).toEqual({});
    expect(() => new Webhook(`whsec_${Buffer.alloc(32, 1).toString("base64")}`).verify("{}", { ...headers })).toThrow();
  });

  it("backs off exponentially with jitter, capped, and reads Retry-After", () => {
    const b = { baseMs: 1000, maxMs: 60_000 };
    expect(retryDelayMs(1, b, () => 0.999)).toBeLessThanOrEqual(1000);
    expect(retryDelayMs(3, b, () => 0.999)).toBeGreaterThan(3900);
    expect(retryDelayMs(3, b, () => 0)).toBe(400);
    expect(retryDelayMs(30, b, () => 0.999)).toBeLessThanOrEqual(60_000);
    expect(new Set(Array.from({ length: 20 }, () => retryDelayMs(5, b))).size).toBeGreaterThan(1);
    expect(retryAfterMs("7", new Date())).toBe(7000);
    expect(retryAfterMs(new Date(Date.now() + 10_000).toUTCString(), new Date())).toBeGreaterThan(8000);
    expect(retryAfterMs("soon", new Date())).toBeUndefined();
  });
});
