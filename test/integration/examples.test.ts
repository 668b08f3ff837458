import { spawn, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";
import { fileURLToPath } from "node:url";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startTestProvider, type TestProvider, type TestTokenSet } from "../helpers/oidc-provider.js";
import { startService, type TestService } from "../helpers/service.js";
import { command, fileAt, requireTools, runs, type Requirement } from "../helpers/tools.js";

/**
 * The client examples in examples/ run as their own processes, exactly as a
 * reader would run them, against a live service and a real oidc-provider.
 * A client is skipped only when its runtime is missing on this machine (the
 * reason is in the test name and on stderr); CI installs them all.
 */

const ROOT = fileURLToPath(new URL("../..", import.meta.url));
const PYTHON = "/usr/bin/python3"; // Debian's, with python3-grpcio; not the pyenv python3 first on PATH
const GRPC_PYTHON_PLUGIN = "/usr/bin/grpc_python_plugin";
const CREDENTIAL = "examples-caller-credential-5f1d7c2a9e";

/** A client whose tools npm brings. */
const ALWAYS: Requirement = { skip: false, reason: undefined, suffix: "" };
const PYTHON_TOOLS = [
  fileAt(PYTHON, "python3"),
  runs(`${PYTHON} with the grpc and google.protobuf modules`, "python3-grpcio python3-protobuf", PYTHON, ["-c", "import grpc, google.protobuf"]),
  command("protoc", "protobuf-compiler"),
  fileAt(GRPC_PYTHON_PLUGIN, "protobuf-compiler-grpc"),
  fileAt("/usr/include/google/protobuf/timestamp.proto", "libprotobuf-dev"),
];
const CURL_TOOLS = [runs("curl with HTTP/2", "curl", "bash", ["-c", "curl --version | grep -qw HTTP2"])];

/** A finished child process. */
interface Run {
  code: number | null;
  stdout: string;
  stderr: string;
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<Run> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, cwd: tmpdir(), stdio: ["ignore", "pipe", "pipe"], timeout: 50_000 });
    let stdout = "";
    let stderr = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (stdout += d));
    child.stderr.setEncoding("utf8").on("data", (d: string) => (stderr += d));
    child.on("error", reject);
    child.on("close", (code) => resolve({ code, stdout, stderr }));
  });
}

let tmp: string;

/**
 * PATH shims for curl and npx that record their argv before running the real
 * command: the shell examples must never put a token or credential on a
 * command line (argv is visible in ps).
 */
function argvRecorder(): { dir: string; log: string } {
  const dir = mkdtempSync(join(tmp, "shims-"));
  const log = join(dir, "argv.log");
  writeFileSync(log, "");
  for (const name of ["curl", "npx"]) {
    const real = spawnSync("bash", ["-c", `command -v ${name}`], { encoding: "utf8" }).stdout.trim();
    if (!real) continue;
    const shim = join(dir, name);
    writeFileSync(shim, `#!/usr/bin/env bash\nprintf '%s\\n' "${name} $*" >> '${log}'\nexec '${real}' "$@"\n`);
    chmodSync(shim, 0o755);
  }
  return { dir, log };
}

let pythonGen: Promise<string> | undefined;
/** Runs examples/python/generate.sh once, into a temporary directory. */
function generatePythonStubs(): Promise<string> {
  pythonGen ??= (async () => {
    const out = join(tmp, "python-gen");
    const r = await run("bash", [join(ROOT, "examples/python/generate.sh"), out], process.env);
    if (r.code !== 0) throw new Error(`generate.sh failed (${r.code}): ${r.stderr}`);
    return out;
  })();
  return pythonGen;
}

/** One example client: how to start it (without --target/--user/--provider), and why it cannot run here. */
interface ExampleClient {
  name: string;
  /** Whether the tools it needs are here (Node.js and buf always are: npm brings them). */
  needs: Requirement;
  command(): Promise<{ file: string; args: string[] }>;
  /** Record the argv of the commands it runs (the shell examples). */
  recordArgv?: boolean;
  /** Which listener it calls: gRPC (the default) or HTTP (Connect). */
  listener?: "grpc" | "http";
}

const CLIENTS: ExampleClient[] = [
  {
    name: "Python (grpcio)",
    needs: requireTools("examples.test.ts: the Python (grpcio) example", PYTHON_TOOLS),
    command: async () => ({
      file: PYTHON,
      args: [join(ROOT, "examples/python/client.py"), "--gen-dir", await generatePythonStubs()],
    }),
  },
  {
    name: "Node.js (@grpc/grpc-js)",
    needs: ALWAYS, // this test runs on Node.js
    command: async () => ({ file: process.execPath, args: [join(ROOT, "examples/node-grpc-js/client.mjs")] }),
  },
  {
    name: "shell (curl, Connect JSON)",
    needs: requireTools("examples.test.ts: the shell (curl) example", CURL_TOOLS),
    command: async () => ({ file: "bash", args: [join(ROOT, "examples/shell/connect-json.sh")] }),
    recordArgv: true,
    listener: "http",
  },
  {
    name: "shell (buf curl, gRPC)",
    needs: ALWAYS, // node_modules/.bin/buf, from npm ci
    command: async () => ({ file: "bash", args: [join(ROOT, "examples/shell/buf-curl.sh")] }),
    recordArgv: true,
  },
];

describe("client examples against a live service", () => {
  let provider: TestProvider;
  let svc: TestService;
  /** The same service with one caller configured: every call needs a credential. */
  let guarded: TestService;
  let n = 0;

  beforeAll(async () => {
    tmp = mkdtempSync(join(tmpdir(), "token-service-examples-"));
    provider = await startTestProvider();
    [svc, guarded] = await Promise.all([
      startService({ dialect: "sqlite", provider }),
      startService({
        dialect: "sqlite",
        provider,
        yaml: {
          callers: [{ name: "py", token_sha256: createHash("sha256").update(CREDENTIAL).digest("hex"), rpcs: ["*"] }],
        },
      }),
    ]);
  });
  afterAll(async () => {
    await Promise.all([svc?.close(), guarded?.close()]);
    await provider?.close();
    if (tmp) rmSync(tmp, { recursive: true, force: true });
  });

  /** Logs a fresh user in at the provider and runs the client with that token set in its environment. */
  async function runClient(c: ExampleClient, target: TestService, extra: { args?: string[]; env?: Record<string, string> } = {}) {
    const user = `example-${++n}`;
    const tokens = await provider.login(user);
    const { file, args } = await c.command();
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      ACCESS_TOKEN: tokens.access_token,
      REFRESH_TOKEN: tokens.refresh_token,
      ID_TOKEN: tokens.id_token,
      EXPIRES_IN: String(tokens.expires_in),
      // gRPC and curl honour proxy variables; the service is on loopback.
      NO_PROXY: ["127.0.0.1", "localhost", process.env.NO_PROXY].filter(Boolean).join(","),
      no_proxy: ["127.0.0.1", "localhost", process.env.no_proxy].filter(Boolean).join(","),
      ...extra.env,
    };
    const recorder = c.recordArgv ? argvRecorder() : undefined;
    if (recorder) env.PATH = `${recorder.dir}${delimiter}${env.PATH ?? ""}`;
    const targetUrl = c.listener === "http" ? target.httpUrl : target.url;
    const argv = [...args, "--target", new URL(targetUrl).host, "--user", user, "--provider", "corp", ...(extra.args ?? [])];
    const result = await run(file, argv, env);
    return { user, tokens, result, argvLog: recorder ? readFileSync(recorder.log, "utf8") : undefined };
  }

  /** No token, refresh token, session id or credential in the output: at most a short prefix. */
  function expectNoSecrets(r: Run, tokens: TestTokenSet) {
    const out = r.stdout + r.stderr;
    for (const secret of [tokens.access_token, tokens.refresh_token, tokens.id_token, CREDENTIAL]) {
      expect(out).not.toContain(secret);
    }
    // Tokens and session ids are long base64url runs; the clients print 8 characters at most.
    expect(out).not.toMatch(/[A-Za-z0-9_-]{20,}/);
  }

  function expectAllSteps(r: Run, tokens: TestTokenSet) {
    expect(r.code, `exit code; stderr: ${r.stderr}`).toBe(0);
    const at = tokens.access_token;
    const id = tokens.id_token;
    expect(r.stdout).toMatch(/^1\. StoreSession: ok, session .{8}… \(43 chars\), access token expires \d{4}-/m);
    expect(r.stdout).toContain(
      `2. GetToken (by session id): ok, Bearer token, ${at.length} chars, starts '${at.slice(0, 8)}', the stored one`,
    );
    expect(r.stdout).toMatch(/^3\. GetToken \(by user and provider\): ok, session .{8}… \(43 chars\)/m);
    expect(r.stdout).toContain(`4. GetToken (id_token): ok, ${id.length} chars, starts '${id.slice(0, 8)}'`);
    expect(r.stdout).toMatch(/^5\. RevokeSession: ok$/m);
    expect(r.stdout).toMatch(/^6\. GetToken after RevokeSession: NOT_FOUND, as expected/m);
    expect(r.stdout).toMatch(/^all steps passed$/m);
    expectNoSecrets(r, tokens);
  }

  function expectArgvClean(argvLog: string | undefined, tokens: TestTokenSet) {
    if (argvLog === undefined) return;
    expect(argvLog, "the shims recorded the commands the script ran").not.toBe("");
    for (const secret of [tokens.access_token, tokens.refresh_token, tokens.id_token, CREDENTIAL]) {
      expect(argvLog).not.toContain(secret);
    }
  }

  for (const c of CLIENTS) {
    it.skipIf(c.needs.skip)(`${c.name}: stores, gets, revokes and sees NOT_FOUND${c.needs.suffix}`, async () => {
      const { user, tokens, result, argvLog } = await runClient(c, svc);
      expectAllSteps(result, tokens);
      expectArgvClean(argvLog, tokens);
      // The client really logged the session out: nothing is left for the user.
      const { sessions } = await svc.client.listSessions({ userId: user });
      expect(sessions).toEqual([]);
    });

    it.skipIf(c.needs.skip)(
      `${c.name}: UNAUTHENTICATED without a caller credential, all steps with --bearer-env${c.needs.suffix}`,
      async () => {
        const without = await runClient(c, guarded);
        expect(without.result.code, without.result.stdout).not.toBe(0);
        expect(without.result.stderr).toMatch(/StoreSession failed.*unauthenticated/i);
        expect(without.result.stdout).not.toContain("1. StoreSession: ok");
        expectNoSecrets(without.result, without.tokens);

        const wrong = await runClient(c, guarded, { args: ["--bearer-env", "TS_CREDENTIAL"], env: { TS_CREDENTIAL: "not-the-credential" } });
        expect(wrong.result.code).not.toBe(0);
        expect(wrong.result.stderr).toMatch(/StoreSession failed.*unauthenticated/i);
        expectNoSecrets(wrong.result, wrong.tokens);

        const withCred = await runClient(c, guarded, { args: ["--bearer-env", "TS_CREDENTIAL"], env: { TS_CREDENTIAL: CREDENTIAL } });
        expectAllSteps(withCred.result, withCred.tokens);
        expect(withCred.result.stdout).toContain("with a caller credential");
        expectArgvClean(withCred.argvLog, withCred.tokens);
      },
    );
  }
});
