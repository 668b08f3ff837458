import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestProvider, type TestProvider, type TestTokenSet } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { command, fileAt, requireTools } from "../helpers/tools.js";

/**
 * examples/go: `run.sh ADDR` builds the Go client with Debian's toolchain in
 * GOPATH mode (no network) and runs it against a live service, as a reader
 * would. Skipped only when the Debian packages are missing here (the reason
 * is in the test name and on stderr); CI installs them.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const RUN_SH = join(ROOT, "examples/go/run.sh");
const GO = "/usr/bin/go";
const GOCODE = "/usr/share/gocode/src";

const NEEDS = requireTools("go-client.test.ts", [
  fileAt(GO, "golang-go"),
  fileAt(join(GOCODE, "google.golang.org/grpc"), "golang-google-grpc-dev"),
  fileAt(join(GOCODE, "google.golang.org/protobuf"), "golang-google-protobuf-dev"),
  fileAt(join(GOCODE, "google.golang.org/genproto/googleapis/rpc/errdetails"), "golang-google-genproto-dev"),
  command("protoc", "protobuf-compiler"),
  command("protoc-gen-go", "protoc-gen-go"),
  command("protoc-gen-go-grpc", "protoc-gen-go-grpc"),
  fileAt("/usr/include/google/protobuf/timestamp.proto", "libprotobuf-dev"),
]);

interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(args: string[], env: NodeJS.ProcessEnv, timeout = 110_000): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn("bash", [RUN_SH, ...args], { env, cwd: tmpdir(), stdio: ["ignore", "pipe", "pipe"], timeout });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

/** A loopback port on which nothing listens (bound, then released). */
function closedPort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.on("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const address = srv.address();
      const port = typeof address === "object" && address ? address.port : 0;
      srv.close(() => resolve(port));
    });
  });
}

describe.skipIf(NEEDS.skip)(`Go client example (examples/go/run.sh)${NEEDS.suffix}`, () => {
  let provider: TestProvider;
  let svc: TestService;
  let tmp: string;
  let buildDir: string;
  let n = 0;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), "token-service-go-"));
    // A fresh build directory, as in a clean clone; the first build compiles grpc-go.
    buildDir = join(tmp, "build");
    const [build] = await Promise.all([
      run(["--build"], { ...process.env, BUILD_DIR: buildDir }),
      (async () => {
        provider = await startTestProvider();
        svc = await startService({ dialect: "sqlite", provider });
      })(),
    ]);
    if (build.code !== 0) throw new Error(`examples/go/run.sh --build failed (${build.code}): ${build.stderr}`);
  });
  afterAll(async () => {
    await svc?.close();
    await provider?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** Logs a fresh user in at the provider and runs run.sh with that token set in its environment. */
  async function runClient(addr: string, env: Record<string, string> = {}) {
    const user = `go-example-${++n}`;
    const tokens = await provider.login(user);
    const result = await run([addr], {
      ...process.env,
      BUILD_DIR: buildDir,
      ACCESS_TOKEN: tokens.access_token,
      REFRESH_TOKEN: tokens.refresh_token,
      ID_TOKEN: tokens.id_token,
      EXPIRES_IN: String(tokens.expires_in),
      PROVIDER: "corp",
      USER_ID: user,
      // grpc-go honours proxy variables; the service is on loopback.
      NO_PROXY: ["127.0.0.1", "localhost", process.env.NO_PROXY].filter(Boolean).join(","),
      no_proxy: ["127.0.0.1", "localhost", process.env.no_proxy].filter(Boolean).join(","),
      ...env,
    });
    return { user, tokens, result };
  }

  /** No token or session id in the output: at most an 8-character prefix. */
  function expectNoSecrets(r: Run, tokens: TestTokenSet) {
    const out = r.stdout + r.stderr;
    for (const secret of [tokens.access_token, tokens.refresh_token, tokens.id_token]) expect(out).not.toContain(secret);
    expect(out).not.toMatch(/[A-Za-z0-9_-]{20,}/);
  }

  it("checks health, stores, gets, sees NOT_FOUND with its ErrorInfo reason, revokes", async () => {
    const { user, tokens, result: r } = await runClient(new URL(svc.url).host);
    expect(r.code, `exit code; stderr: ${r.stderr}`).toBe(0);
    const at = tokens.access_token;
    const id = tokens.id_token;
    expect(r.stdout).toContain(`target ${new URL(svc.url).host}, user "${user}", provider "corp"`);
    expect(r.stdout).toMatch(/^0\. Health check: SERVING \(server and tokenservice\.v1\.TokenService\)$/m);
    expect(r.stdout).toMatch(/^1\. StoreSession: ok, session .{8}… \(43 chars\), access token expires \d{4}-/m);
    expect(r.stdout).toContain(
      `2. GetToken (by session id): ok, Bearer token, ${at.length} chars, starts '${at.slice(0, 8)}', the stored one`,
    );
    expect(r.stdout).toMatch(/^3\. GetToken \(by user and provider\): ok, session .{8}… \(43 chars\)/m);
    expect(r.stdout).toContain(`4. GetToken (id_token): ok, ${id.length} chars, starts '${id.slice(0, 8)}'`);
    expect(r.stdout).toMatch(/^5\. GetToken \(unknown session\): NOT_FOUND, as expected, ErrorInfo reason SESSION_NOT_FOUND$/m);
    expect(r.stdout).toMatch(/^6\. RevokeSession: ok$/m);
    expect(r.stdout).toMatch(/^7\. GetToken after RevokeSession: NOT_FOUND, as expected, ErrorInfo reason SESSION_NOT_FOUND$/m);
    expect(r.stdout).toMatch(/^all steps passed$/m);
    expect(r.stderr).toBe("");
    expectNoSecrets(r, tokens);
    // The client really logged the session out: nothing is left for the user.
    const { sessions } = await svc.client.listSessions({ userId: user });
    expect(sessions).toEqual([]);
  });

  it("fails, with a clear message, when nothing listens at ADDR", async () => {
    const port = await closedPort();
    const { tokens, result: r } = await runClient(`127.0.0.1:${port}`);
    expect(r.code).toBe(1);
    expect(r.stderr).toMatch(/^FAILED: health Check failed: UNAVAILABLE/m);
    expect(r.stdout).not.toContain("0. Health check");
    expect(r.stdout).not.toContain("all steps passed");
    expectNoSecrets(r, tokens);
  });

  it("fails at StoreSession for a provider the service does not have", async () => {
    const { tokens, result: r } = await runClient(new URL(svc.url).host, { PROVIDER: "no-such-provider" });
    expect(r.code).toBe(1);
    expect(r.stdout).toContain("0. Health check: SERVING");
    expect(r.stdout).not.toContain("1. StoreSession: ok");
    expect(r.stderr).toMatch(/^FAILED: StoreSession failed: INVALID_ARGUMENT: provider: .*\(reason INVALID_ARGUMENT\)$/m);
    expect(r.stdout).not.toContain("all steps passed");
    expectNoSecrets(r, tokens);
  });

  it("refuses to start without ACCESS_TOKEN or PROVIDER (exit 2)", async () => {
    const noToken = await runClient(new URL(svc.url).host, { ACCESS_TOKEN: "" });
    expect(noToken.result.code).toBe(2);
    expect(noToken.result.stderr).toContain("ACCESS_TOKEN must be set in the environment");
    const noProvider = await runClient(new URL(svc.url).host, { PROVIDER: "" });
    expect(noProvider.result.code).toBe(2);
    expect(noProvider.result.stderr).toContain("PROVIDER (or -provider) must name a provider");
  });
});
