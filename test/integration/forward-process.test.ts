import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { startOpenAiStandIn, type OpenAiStandIn } from "../helpers/openai-stand-in.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";

/**
 * The forwarding proxy streams request bodies: a 50 MB upload through the
 * built service, running as its own process with the production heap cap,
 * leaves its peak resident set (VmHWM) under 200 MB.
 */

const MB = 1024 * 1024;

/** The peak resident set of a process, in bytes (Linux: /proc/PID/status VmHWM). */
function peakRss(pid: number): number {
  const m = /^VmHWM:\s+(\d+) kB$/m.exec(readFileSync(`/proc/${pid}/status`, "utf8"));
  if (!m) throw new Error("no VmHWM");
  return Number(m[1]) * 1024;
}

/** POSTs `total` bytes in 64 KiB writes that wait for drain: the sender never gets ahead of the proxy. */
function upload(url: string, total: number, headers: Record<string, string>): Promise<{ status: number; body: string; sha256: string }> {
  const chunk = Buffer.alloc(64 * 1024);
  for (let i = 0; i < chunk.length; i++) chunk[i] = (i * 31) & 0xff;
  const hash = createHash("sha256");
  return new Promise((resolve, reject) => {
    const req = http.request(url, { method: "POST", headers: { ...headers, "content-type": "application/octet-stream", "content-length": String(total) } }, (res) => {
      let body = "";
      res.setEncoding("utf8").on("data", (d: string) => (body += d));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body, sha256: hash.digest("hex") }));
    });
    req.on("error", reject);
    let sent = 0;
    const write = () => {
      while (sent < total) {
        const part = chunk.subarray(0, Math.min(chunk.length, total - sent));
        sent += part.length;
        hash.update(part);
        if (!req.write(part)) return void req.once("drain", write);
      }
      req.end();
    };
    write();
  });
}

describe("forwarding a 50 MB upload (service as a child process)", () => {
  let standIn: OpenAiStandIn;
  let svc: ServiceProcess;
  let dir: string;

  beforeAll(async () => {
    standIn = await startOpenAiStandIn();
    dir = mkdtempSync(join(tmpdir(), "forward-rss-"));
    writeFileSync(join(dir, "key"), "sk-upload-fallback\n");
    writeFileSync(
      join(dir, "config.yaml"),
      stringify({
        // The provider is never called: the request names a user without a session, so the fallback key goes.
        providers: [{ id: "corp", issuer: "http://127.0.0.1:9", client_id: "c", client_secret: "s", allow_insecure_http: true }],
        refresh: { background: { enabled: false } },
        forward: [{ id: "models", url: `${standIn.url}/v1`, provider: "corp", fallback_key_file: "key", allow_insecure_http: true }],
      }),
    );
    svc = await spawnService({
      DATABASE_URL: `sqlite:${join(dir, "s.db")}`,
      TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"),
      TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("rss"),
    });
  });
  afterAll(async () => {
    svc?.kill();
    await svc?.exited;
    await standIn?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("streams the body through with the service's peak RSS under 200 MB", async () => {
    const total = 50 * MB;
    const result = await upload(`${svc.httpUrl!}/forward/models/upload`, total, { "x-token-service-user": "nobody" });
    expect(result.status).toBe(200);
    expect(JSON.parse(result.body)).toEqual({ bytes: total, sha256: result.sha256 });
    expect(standIn.requests[0]!.headers.authorization).toBe("Bearer sk-upload-fallback");
    const peak = peakRss(svc.child.pid!);
    expect(peak).toBeLessThan(200 * MB);
  });
});
