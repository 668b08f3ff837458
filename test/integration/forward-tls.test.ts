import { once } from "node:events";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import http2 from "node:http2";
import https from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { makeCertificates, type TestCertificates } from "../helpers/certs.js";
import { startService, type TestService } from "../helpers/service.js";

/**
 * Forwarding over TLS at both ends: a caller on HTTP/2 (the TLS listener
 * offers h2), a target over https verified against its `ca_file`, and the
 * same target without it, which the system CAs do not trust.
 */

describe("forwarding over TLS: an HTTP/2 caller, a target verified against its ca_file", () => {
  let dir: string;
  let certs: TestCertificates;
  let upstream: https.Server;
  let svc: TestService;
  const seen: Array<string | undefined> = [];

  beforeAll(async () => {
    dir = mkdtempSync(join(tmpdir(), "forward-tls-"));
    certs = await makeCertificates(dir);
    writeFileSync(join(dir, "key"), "sk-tls-key\n");
    upstream = https.createServer({ cert: readFileSync(certs.serverCertFile), key: readFileSync(certs.serverKeyFile) }, (req, res) => {
      seen.push(req.headers.authorization);
      req.resume();
      res.writeHead(200, { "content-type": "text/event-stream", connection: "keep-alive", "keep-alive": "timeout=5" });
      res.write('data: {"n":1}\n\n');
      res.end("data: [DONE]\n\n");
    });
    upstream.listen(0, "127.0.0.1");
    await once(upstream, "listening");
    const url = `https://127.0.0.1:${(upstream.address() as AddressInfo).port}/v1`;
    svc = await startService({
      dialect: "sqlite",
      yaml: {
        providers: [{ id: "corp", issuer: "https://login.example.com", client_id: "c", client_secret: "s" }],
        tls: { cert_file: certs.serverCertFile, key_file: certs.serverKeyFile },
        forward: [
          { id: "secure", url, provider: "corp", ca_file: certs.caFile, fallback_key_file: join(dir, "key") },
          { id: "untrusted", url, provider: "corp", fallback_key_file: join(dir, "key") },
        ],
      },
    });
  });
  afterAll(async () => {
    await svc?.close();
    upstream?.closeAllConnections();
    upstream?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  /** One request over HTTP/2: status, headers and body. */
  async function h2(path: string): Promise<{ status: number; headers: http2.IncomingHttpHeaders; body: string }> {
    const session = http2.connect(svc.httpUrl, { ca: certs.ca });
    try {
      const stream = session.request({ ":method": "POST", ":path": path, "content-type": "application/json", "x-token-service-user": "nobody" });
      stream.end("{}");
      const [headers] = (await once(stream, "response")) as [http2.IncomingHttpHeaders];
      let body = "";
      stream.setEncoding("utf8").on("data", (d: string) => (body += d));
      await once(stream, "end");
      return { status: Number(headers[":status"]), headers, body };
    } finally {
      session.close();
    }
  }

  it("streams the answer to an HTTP/2 caller, without the upstream's connection headers", async () => {
    expect(svc.httpUrl.startsWith("https://")).toBe(true);
    const res = await h2("/forward/secure/chat/completions");
    expect(res.status).toBe(200);
    expect(res.body).toBe('data: {"n":1}\n\ndata: [DONE]\n\n');
    expect(res.headers["content-type"]).toBe("text/event-stream");
    expect(res.headers["keep-alive"]).toBeUndefined();
    expect(seen.at(-1)).toBe("Bearer sk-tls-key");
  });

  it("refuses a target whose certificate the system CAs do not verify (no ca_file): 502, nothing sent", async () => {
    const before = seen.length;
    const res = await h2("/forward/untrusted/chat/completions");
    expect(res.status).toBe(502);
    expect(JSON.parse(res.body)).toMatchObject({ reason: "UPSTREAM_UNREACHABLE" });
    expect(seen.length).toBe(before);
  });
});
