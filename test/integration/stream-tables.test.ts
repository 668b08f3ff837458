import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { streamTableCounts } from "../../src/rpc/http2-streams.js";
import { makeCertificates } from "../helpers/certs.js";
import { connectGrpcClient, connectJsonClient, grpcJsClient } from "../helpers/clients.js";
import { startTestProvider, type TestProvider } from "../helpers/oidc-provider.js";
import { startService } from "../helpers/service.js";

/**
 * Both listeners keep their HTTP/2 connections' streams in a StreamTable
 * (src/rpc/http2-streams.ts) instead of node:http2's own map: the gRPC
 * listener through grpc-js's server factory, the HTTP listener over TLS
 * through its session event. This fails when a grpc-js or Node upgrade
 * changes what the replacement relies on, which would otherwise only show in
 * the benchmarks. And many calls at once on one connection are all answered.
 */
describe("stream tables on the listeners", () => {
  let provider: TestProvider;

  beforeAll(async () => {
    provider = await startTestProvider();
  });

  afterAll(async () => {
    await provider?.close();
  });

  it("the gRPC listener's connections get a stream table, and 300 calls at once on one connection are answered", async () => {
    const svc = await startService({ dialect: "sqlite", provider });
    try {
      const before = streamTableCounts();
      const { sessionId } = await svc.client.storeSession({ userId: "u-streams", provider: "corp", tokens: { accessToken: "at-streams", expiresIn: 3600n } });
      // Connect-ES over one HTTP/2 connection, and stock grpc-js over another.
      const answers = await Promise.all(Array.from({ length: 300 }, () => svc.client.getToken({ userId: "u-streams", sessionId })));
      expect(answers.every((a) => a.token === "at-streams")).toBe(true);
      const grpcJs = await Promise.all(Array.from({ length: 300 }, () => svc.grpcJs.call("GetToken", { user_id: "u-streams", session_id: sessionId })));
      expect(grpcJs.every((a) => a.token === "at-streams")).toBe(true);
      const after = streamTableCounts();
      expect(after.adopted).toBeGreaterThanOrEqual(before.adopted + 2);
      expect(after.skipped).toBe(before.skipped);
    } finally {
      await svc.close();
    }
  });

  it("over TLS, the HTTP listener's HTTP/2 connections get one too", async () => {
    const dir = mkdtempSync(join(tmpdir(), "token-service-streams-"));
    const bearer = randomBytes(16).toString("hex");
    try {
      const certs = await makeCertificates(dir);
      const svc = await startService({
        dialect: "sqlite",
        provider,
        yaml: {
          tls: { cert_file: certs.serverCertFile, key_file: certs.serverKeyFile },
          callers: [{ name: "ops", token_sha256: createHash("sha256").update(bearer).digest("hex"), rpcs: ["*"] }],
        },
      });
      try {
        const stored = await connectGrpcClient(svc.url, { ca: certs.ca, bearer }).storeSession({
          userId: "u-tls-streams",
          provider: "corp",
          tokens: { accessToken: "at-tls-streams", expiresIn: 3600n },
        });
        const before = streamTableCounts();
        const http = connectJsonClient(svc.httpUrl, { ca: certs.ca, bearer, httpVersion: "2" });
        const answers = await Promise.all(Array.from({ length: 100 }, () => http.getToken({ userId: "u-tls-streams", sessionId: stored.sessionId })));
        expect(answers.every((a) => a.token === "at-tls-streams")).toBe(true);
        const grpcJs = grpcJsClient(svc.url, { ca: certs.ca, bearer });
        try {
          expect((await grpcJs.call("GetToken", { user_id: "u-tls-streams", session_id: stored.sessionId })).token).toBe("at-tls-streams");
        } finally {
          grpcJs.close();
        }
        const after = streamTableCounts();
        expect(after.adopted).toBeGreaterThanOrEqual(before.adopted + 2);
        expect(after.skipped).toBe(before.skipped);
      } finally {
        await svc.close();
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
