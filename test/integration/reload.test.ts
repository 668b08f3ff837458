import { createHash, X509Certificate } from "node:crypto";
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { once } from "node:events";
import http2 from "node:http2";
import { connect as tlsConnect, type TLSSocket } from "node:tls";
import { Code, ConnectError, createClient } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { status as GrpcStatus } from "@grpc/grpc-js";
import { stringify } from "yaml";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { ProviderService } from "../../gen/tokenservice/v1/token_service_pb.js";
import { Health, HealthCheckResponse_ServingStatus } from "../../gen/health/v1/health_pb.js";
import { makeCertificates, type TestCertificates } from "../helpers/certs.js";
import { connectGrpcClient, connectJsonClient, grpcJsClient, type GrpcJsError } from "../helpers/clients.js";
import { spawnService, type ServiceProcess } from "../helpers/process.js";
import { codeOf } from "../helpers/failure.js";

const sha256 = (s: string) => createHash("sha256").update(s).digest("hex");
/** Values that must never reach the log. */
const OLD = "reload-old-credential-0123456789abcdef";
const NEW = "reload-new-credential-fedcba9876543210";
const OPS = "reload-ops-credential-5555aaaa";
const CLIENT_SECRET = "reload-client-secret-do-not-log-4242";
const OTHER_SECRET = "reload-other-secret-do-not-log-1717";

const RELOAD_FAILED = /reload failed.*old configuration.*kept/;

function provider(id: string, secret: string, extra: Record<string, unknown> = {}) {
  // Explicit endpoints: nothing is fetched until a session is refreshed.
  return { id, issuer: "https://idp.example.com", client_id: `client-${id}`, client_secret: secret, token_endpoint: "https://idp.example.com/token", ...extra };
}

function callers(credential: string, extra: Record<string, unknown>[] = []) {
  return [{ name: "app", token_sha256: sha256(credential), rpcs: ["*"] }, ...extra];
}

/** Polls `check` until it holds; fails after `timeoutMs` with the last value seen. */
async function until<T>(what: string, get: () => Promise<T> | T, check: (v: T) => boolean, timeoutMs = 10_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: T | undefined;
  for (;;) {
    last = await get();
    if (check(last)) return last;
    if (Date.now() > deadline) throw new Error(`${what}: not within ${timeoutMs} ms (last: ${JSON.stringify(last)})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** The log lines written from index `from` on. */
function linesSince(svc: ServiceProcess, from: number) {
  return svc.lines().slice(from);
}

/** Nothing secret in anything the process wrote. */
function expectNoSecrets(svc: ServiceProcess, extra: string[] = []) {
  const out = svc.stdout() + svc.stderr();
  for (const secret of [OLD, NEW, OPS, CLIENT_SECRET, OTHER_SECRET, ...extra]) expect(out).not.toContain(secret);
}

let dir: string;
beforeAll(() => {
  dir = mkdtempSync(join(tmpdir(), "token-service-reload-"));
});
afterAll(() => {
  rmSync(dir, { recursive: true, force: true });
});

describe("reload on SIGHUP: callers, providers, log level, bad files", () => {
  let svc: ServiceProcess;
  let configFile: string;
  const write = (content: Record<string, unknown> | string) =>
    writeFileSync(configFile, typeof content === "string" ? content : stringify(content));
  const list = (credential: string) => codeOf(connectGrpcClient(svc.url, { bearer: credential }).listSessions({ userId: "u1" }));
  const providerIds = async () => {
    const client = createClient(ProviderService, createGrpcTransport({ baseUrl: svc.url, interceptors: [(next) => (req) => (req.header.set("authorization", `Bearer ${OPS}`), next(req))] }));
    return (await client.listProviders({})).providers.map((p) => p.id);
  };
  /** Sends SIGHUP and waits for the reload's own line (success or refusal). */
  const hup = async () => {
    const from = svc.lines().length;
    process.kill(svc.child.pid!, "SIGHUP");
    const line = await until(
      "a reload line",
      () => linesSince(svc, from).find((l) => l.trigger === "SIGHUP" && (String(l.msg).startsWith("configuration reloaded") || RELOAD_FAILED.test(String(l.msg)))),
      (l) => l !== undefined,
    );
    return line!;
  };

  beforeAll(async () => {
    const sub = mkdtempSync(join(dir, "hup-"));
    configFile = join(sub, "config.yaml");
    write({ providers: [provider("corp", CLIENT_SECRET)], callers: callers(OLD, [{ name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] }]) });
    svc = await spawnService({ DATABASE_URL: `sqlite:${join(sub, "db.sqlite")}`, TOKEN_SERVICE_CONFIG: configFile });
  });
  afterAll(async () => {
    svc?.kill("SIGTERM");
    await svc?.exited;
  });

  it("rotates a caller credential: the new one works and the old one is refused, same process", async () => {
    const pid = svc.child.pid;
    expect(await list(OLD)).toBe("ok");
    expect(await list(NEW)).toBe(Code.Unauthenticated);
    write({
      providers: [provider("corp", CLIENT_SECRET)],
      callers: callers(NEW, [{ name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] }]),
      log_level: "debug",
    });
    const started = Date.now();
    const line = await hup();
    expect(line.msg).toBe("configuration reloaded");
    expect(line.callers).toEqual({ added: [], removed: [], changed: ["app"] });
    expect(line.logLevel).toBe("info -> debug");
    await until("the new credential", () => list(NEW), (c) => c === "ok");
    expect(await list(OLD)).toBe(Code.Unauthenticated);
    expect(Date.now() - started).toBeLessThan(10_000);
    // The new level applies: health checks log at debug.
    const health = createClient(Health, createGrpcTransport({ baseUrl: svc.url }));
    const from = svc.lines().length;
    expect((await health.check({})).status).toBe(HealthCheckResponse_ServingStatus.SERVING);
    await until("a debug line", () => linesSince(svc, from).some((l) => l.level === "debug"), Boolean);
    expect(svc.child.pid).toBe(pid);
    expect(svc.child.exitCode).toBeNull();
    expect(svc.lines().filter((l) => l.msg === "token service listening")).toHaveLength(1);
  });

  it("adds, changes and removes YAML providers", async () => {
    expect(await providerIds()).toEqual(["corp"]);
    write({
      providers: [provider("corp", CLIENT_SECRET, { scopes: ["openid"] }), provider("other", OTHER_SECRET)],
      callers: callers(NEW, [
        { name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] },
        { name: "scoped", token_sha256: sha256("scoped-caller"), rpcs: ["GetToken"], providers: ["other"] },
      ]),
    });
    const line = await hup();
    expect(line.providers).toEqual({ added: ["other"], removed: [], changed: ["corp"] });
    expect(line.providerCount).toBe(2);
    expect(await providerIds()).toEqual(["corp", "other"]);
    write({ providers: [provider("other", OTHER_SECRET)], callers: callers(NEW, [{ name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] }]) });
    expect((await hup()).providers).toEqual({ added: [], removed: ["corp"], changed: [] });
    expect(await providerIds()).toEqual(["other"]);
  });

  it("refuses a broken file, logs why, and keeps the old configuration", async () => {
    const good = { providers: [provider("other", OTHER_SECRET)], callers: callers(NEW, [{ name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] }]) };
    const bad: Array<[string, string | Record<string, unknown>, RegExp]> = [
      ["invalid YAML", `providers: [\n  - id: other\ncallers: {{{ token_sha256: ${sha256(OLD)}`, /not valid YAML/],
      ["a schema error", { ...good, callers: [{ name: "app", token_sha256: "not-a-digest", rpcs: ["*"] }] }, /callers\[0\]\.token_sha256/],
      ["an unknown key", { ...good, caller: [] }, /caller/],
      ["a caller naming an unknown provider", { ...good, callers: callers(OLD, [{ name: "x", token_sha256: sha256(OPS), rpcs: ["*"], providers: ["nope"] }]) }, /callers\[1\]\.providers\[0\]/],
      ["a missing client secret file", { ...good, providers: [{ ...provider("other", OTHER_SECRET), client_secret: undefined, client_secret_file: "missing.txt" }] }, /client_secret_file/],
    ];
    for (const [what, content, field] of bad) {
      write(content);
      const line = await hup();
      expect(String(line.msg), what).toMatch(RELOAD_FAILED);
      expect(line.level, what).toBe("error");
      expect(String(line.error), what).toMatch(field);
      expect(await list(NEW), what).toBe("ok");
      expect(await list(OLD), what).toBe(Code.Unauthenticated);
      expect(svc.child.exitCode, what).toBeNull();
    }
    // Fixed again: applies.
    write(good);
    expect((await hup()).msg).toMatch(/^configuration reloaded/);
    expect(await list(NEW)).toBe("ok");
  });

  it("reports settings that need a restart, and keeps them", async () => {
    write({
      providers: [provider("other", OTHER_SECRET)],
      callers: callers(NEW, [{ name: "ops", token_sha256: sha256(OPS), rpcs: ["*"] }]),
      limits: { max_message_bytes: 4096 },
      reflection: false,
    });
    const from = svc.lines().length;
    const line = await hup();
    expect(line.needsRestart).toEqual(["limits.max_message_bytes", "reflection"]);
    // The file watcher may reload the same file once more by itself: count the SIGHUP's lines.
    const warnings = linesSince(svc, from).filter((l) => /needs a restart/.test(String(l.msg)) && l.trigger === "SIGHUP");
    expect(warnings.map((l) => l.setting)).toEqual(["limits.max_message_bytes", "reflection"]);
  });

  it("never logs a credential or client secret", () => {
    expectNoSecrets(svc);
  });
});

describe("reload without a configuration file", () => {
  it("logs that there is nothing to reload and keeps serving", async () => {
    const sub = mkdtempSync(join(dir, "env-"));
    const svc = await spawnService({ DATABASE_URL: `sqlite:${join(sub, "db.sqlite")}` }, { cwd: sub });
    try {
      process.kill(svc.child.pid!, "SIGHUP");
      const line = await svc.waitForLine((l) => /nothing to reload/.test(String(l.msg)), 10_000);
      expect(line.trigger).toBe("SIGHUP");
      expect(await codeOf(connectGrpcClient(svc.url).listSessions({ userId: "u1" }))).toBe("ok");
      expect(svc.child.exitCode).toBeNull();
    } finally {
      svc.kill("SIGTERM");
      await svc.exited;
    }
  });
});

describe("certificate rotation", () => {
  let certs: TestCertificates;
  let svc: ServiceProcess;
  let tlsDir: string;
  let configFile: string;
  let grpcUrl: string;
  let httpUrl: string;
  let version = 0;
  const keysWritten: string[] = [];

  /**
   * Publishes a certificate the way Kubernetes updates a secret volume: a
   * new timestamped directory, a `..data_tmp` symlink to it renamed over
   * `..data`; `tls.crt` and `tls.key` are symlinks through `..data`.
   */
  function publish(cert: Buffer, key: Buffer) {
    const name = `..v${++version}`;
    mkdirSync(join(tlsDir, name));
    writeFileSync(join(tlsDir, name, "tls.crt"), cert);
    writeFileSync(join(tlsDir, name, "tls.key"), key);
    // The first line of the key's base64 body: a log holding the key would hold it.
    keysWritten.push(key.toString("utf8").split("\n")[1]!);
    symlinkSync(name, join(tlsDir, "..data_tmp"));
    renameSync(join(tlsDir, "..data_tmp"), join(tlsDir, "..data"));
  }

  /** The SHA-256 fingerprint of the certificate a new TLS connection to `url` is shown. */
  const peerFingerprint = (url: string) =>
    new Promise<string>((resolve, reject) => {
      const { hostname, port } = new URL(url);
      const socket = tlsConnect({ host: hostname, port: Number(port), ca: certs.ca, servername: "localhost", ALPNProtocols: ["h2"] }, () => {
        resolve(socket.getPeerCertificate().fingerprint256);
        socket.end();
      });
      socket.on("error", reject);
    });
  const fingerprintOf = (cert: Buffer) => new X509Certificate(cert).fingerprint256;

  beforeAll(async () => {
    const sub = mkdtempSync(join(dir, "tls-"));
    certs = await makeCertificates(sub);
    tlsDir = join(sub, "secret");
    mkdirSync(tlsDir);
    const first = await certs.server();
    publish(first.cert, first.key);
    symlinkSync("..data/tls.crt", join(tlsDir, "tls.crt"));
    symlinkSync("..data/tls.key", join(tlsDir, "tls.key"));
    configFile = join(sub, "config.yaml");
    writeFileSync(
      configFile,
      stringify({
        providers: [provider("corp", CLIENT_SECRET)],
        tls: { cert_file: join(tlsDir, "tls.crt"), key_file: join(tlsDir, "tls.key") },
        callers: callers(OLD),
      }),
    );
    svc = await spawnService({ DATABASE_URL: `sqlite:${join(sub, "db.sqlite")}`, TOKEN_SERVICE_CONFIG: configFile });
    grpcUrl = svc.url.replace("http://", "https://");
    httpUrl = svc.httpUrl!.replace("http://", "https://");
    expect(await peerFingerprint(grpcUrl)).toBe(fingerprintOf(first.cert));
  });
  afterAll(async () => {
    svc?.kill("SIGTERM");
    await svc?.exited;
  });

  it("rotates the server certificate on SIGHUP under load: no call fails, new connections get the new certificate", async () => {
    // Established channels: one grpc-js channel, one HTTP/2 and one HTTP/1.1 connection to the HTTP listener.
    const grpcJs = grpcJsClient(grpcUrl, { ca: certs.ca, bearer: OLD });
    const h2 = connectJsonClient(httpUrl, { ca: certs.ca, bearer: OLD, httpVersion: "2" });
    const h1 = connectJsonClient(httpUrl, { ca: certs.ca, bearer: OLD, httpVersion: "1.1" });
    const calls = [
      () => grpcJs.call("ListSessions", { user_id: "u1" }),
      () => h2.listSessions({ userId: "u1" }),
      () => h1.listSessions({ userId: "u1" }),
    ];
    let stop = false;
    const failures: string[] = [];
    const done = [0, 0, 0];
    const loops = calls.map(async (call, i) => {
      while (!stop) {
        try {
          await call();
          done[i]!++;
        } catch (err) {
          failures.push(`${i}: ${String((err as Error).message)}`);
        }
      }
    });
    // Bare HTTP/2 connections opened before the rotation, one to each listener: they must stay up, on the old certificate.
    const before = await peerFingerprint(grpcUrl);
    const sessions = [grpcUrl, httpUrl].map((url) => http2.connect(url, { ca: certs.ca, servername: "localhost" }));
    const ping = (s: http2.ClientHttp2Session) => new Promise<void>((resolve, reject) => s.ping((err) => (err ? reject(err) : resolve())));
    await Promise.all(sessions.map((s) => once(s, "connect")));
    await Promise.all(sessions.map(ping));
    try {
      await until("calls under way", () => done.every((n) => n > 20), Boolean);
      const next = await certs.server();
      publish(next.cert, next.key);
      process.kill(svc.child.pid!, "SIGHUP");
      await until("the new certificate on the gRPC listener", () => peerFingerprint(grpcUrl), (f) => f === fingerprintOf(next.cert));
      await until("the new certificate on the HTTP listener", () => peerFingerprint(httpUrl), (f) => f === fingerprintOf(next.cert));
      const after = [...done];
      await until("calls going on after the rotation", () => done.every((n, i) => n > after[i]! + 20), Boolean);
      for (const s of sessions) {
        await ping(s);
        expect(s.closed || s.destroyed).toBe(false);
        expect((s.socket as TLSSocket).getPeerCertificate().fingerprint256).toBe(before);
      }
      // A new channel handshakes with the new certificate.
      const fresh = grpcJsClient(grpcUrl, { ca: certs.ca, bearer: OLD });
      try {
        await fresh.call("ListSessions", { user_id: "u1" });
      } finally {
        fresh.close();
      }
    } finally {
      stop = true;
      await Promise.all(loops);
      grpcJs.close();
      for (const s of sessions) s.close();
    }
    expect(failures).toEqual([]);
    expect(svc.child.exitCode).toBeNull();
  });

  it("reloads by itself when the certificate files are swapped on disk (no signal)", async () => {
    const from = svc.lines().length;
    const next = await certs.server();
    publish(next.cert, next.key);
    await until("the new certificate, without a signal", () => peerFingerprint(grpcUrl), (f) => f === fingerprintOf(next.cert));
    expect(await peerFingerprint(httpUrl)).toBe(fingerprintOf(next.cert));
    const line = await until("the reload line", () => linesSince(svc, from).find((l) => String(l.msg).startsWith("configuration reloaded")), Boolean);
    expect(line!.trigger).toBe("file change");
    expect((line!.certificate as { sha256: string }).sha256).toBe(fingerprintOf(next.cert));
  });

  it("refuses a key that does not match the certificate, and keeps serving the old one", async () => {
    const current = await peerFingerprint(grpcUrl);
    const from = svc.lines().length;
    const [a, b] = [await certs.server(), await certs.server()];
    publish(a.cert, b.key);
    const line = await until("the refusal", () => linesSince(svc, from).find((l) => RELOAD_FAILED.test(String(l.msg))), Boolean);
    expect(String(line!.error)).toMatch(/tls\.key_file: the key does not match/);
    expect(await peerFingerprint(grpcUrl)).toBe(current);
    expect(await peerFingerprint(httpUrl)).toBe(current);
    const client = grpcJsClient(grpcUrl, { ca: certs.ca, bearer: OLD });
    try {
      await client.call("ListSessions", { user_id: "u1" });
    } finally {
      client.close();
    }
    // Put right: applies.
    publish(a.cert, a.key);
    await until("the fixed certificate", () => peerFingerprint(grpcUrl), (f) => f === fingerprintOf(a.cert));
  });

  it("reloads by itself when the config file is replaced by a rename (no signal)", async () => {
    const tmp = `${configFile}.tmp`;
    writeFileSync(
      tmp,
      stringify({
        providers: [provider("corp", CLIENT_SECRET)],
        tls: { cert_file: join(tlsDir, "tls.crt"), key_file: join(tlsDir, "tls.key") },
        callers: callers(NEW),
      }),
    );
    renameSync(tmp, configFile);
    const code = (bearer: string) =>
      connectGrpcClient(grpcUrl, { ca: certs.ca, bearer })
        .listSessions({ userId: "u1" })
        .then(
          () => "ok",
          (err: ConnectError) => err.code,
        );
    await until("the new credential, without a signal", () => code(NEW), (c) => c === "ok");
    expect(await code(OLD)).toBe(Code.Unauthenticated);
    const grpcJs = grpcJsClient(grpcUrl, { ca: certs.ca, bearer: OLD });
    try {
      await expect(grpcJs.call("ListSessions", { user_id: "u1" })).rejects.toMatchObject({ code: GrpcStatus.UNAUTHENTICATED } satisfies Partial<GrpcJsError>);
    } finally {
      grpcJs.close();
    }
  });

  it("never logs a credential, client secret or private key", () => {
    expectNoSecrets(svc, keysWritten);
  });
});
