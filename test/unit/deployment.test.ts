import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { parse, parseAllDocuments } from "yaml";
import { describe, expect, it } from "vitest";
import { loadConfig } from "../../src/config.js";
import { generateKeySpec } from "../../src/crypto/key-ring.js";
import { NODE_HEAP_ARGS } from "../helpers/process.js";

// No container engine runs on the CI machines, so the image and the compose file cannot be built
// here. These checks hold them to what docs/deploying.md says they are.
const root = fileURLToPath(new URL("../..", import.meta.url));
const read = (p: string) => readFileSync(`${root}/${p}`, "utf8");

describe("Dockerfile", () => {
  const dockerfile = read("Dockerfile");

  it("builds in stages on Node 22 and ships only production dependencies", () => {
    expect(dockerfile).toMatch(/^FROM node:22[\w.-]* AS build$/m);
    expect(dockerfile).toMatch(/^FROM node:22[\w.-]* AS runtime$/m);
    expect(dockerfile).toMatch(/npm ci --omit=dev/);
    expect(dockerfile).toMatch(/COPY --from=build \/app\/dist \.\/dist/);
  });

  it("runs as a non-root user, exposes the gRPC, HTTP and admin ports, and checks health without extra binaries", () => {
    const runtime = dockerfile.slice(dockerfile.indexOf("AS runtime"));
    expect(runtime).toMatch(/^USER node$/m);
    expect(runtime).toMatch(/^EXPOSE 50051 50052 9464$/m);
    expect(runtime).toMatch(/TOKEN_SERVICE_ADDR=0\.0\.0\.0:50051/);
    expect(runtime).toMatch(/TOKEN_SERVICE_HTTP_ADDR=0\.0\.0\.0:50052/);
    expect(runtime).toMatch(/^HEALTHCHECK .*\n\s+CMD \["node", "-e", ".*\/healthz/m);
    const healthcheck = /^HEALTHCHECK[\s\S]*?CMD (.*)$/m.exec(runtime)![1]!;
    expect(healthcheck).not.toMatch(/curl|wget/);
  });
});

describe("docker-compose.yml", () => {
  const compose = parse(read("docker-compose.yml"), { merge: true }) as {
    services: Record<string, { environment?: Record<string, string>; ports?: string[]; build?: { target: string }; image?: string }>;
    "x-token-service": { environment: Record<string, string> };
  };

  it("runs PostgreSQL, the demo provider and two replicas that share the database and the keys", () => {
    const s = compose.services;
    expect(s.postgres?.image).toMatch(/^postgres:15/);
    expect(s["demo-provider"]?.build?.target).toBe("demo-provider");
    const replicas = Object.keys(s).filter((n) => n.startsWith("token-service-"));
    expect(replicas).toHaveLength(2);
    const env = compose["x-token-service"].environment;
    for (const r of replicas) expect(s[r]!.environment).toEqual(env);
    expect(env.TOKEN_SERVICE_ENCRYPTION_KEYS).toMatch(/^\$\{TOKEN_SERVICE_ENCRYPTION_KEYS:\?/);
    expect(env.DATABASE_URL).toMatch(/^postgres:\/\/.*@postgres:5432\//);
    const hostPorts = replicas.flatMap((r) => s[r]!.ports!.map((p) => p.split(":")[0]));
    expect(new Set(hostPorts).size).toBe(hostPorts.length);
  });

  it("gives the replicas a configuration the service accepts, with the demo caller's credential", () => {
    // The compose volumes mount examples/compose/* under /etc/token-service: do the same by rewriting the path.
    const dir = mkdtempSync(join(tmpdir(), "token-service-compose-"));
    const yaml = read("examples/compose/config.yaml").replace(
      "/etc/token-service/demo-client-secret",
      `${root}/examples/compose/demo-client-secret`,
    );
    writeFileSync(join(dir, "config.yaml"), yaml);
    const config = loadConfig(
      {
        TOKEN_SERVICE_ADDR: "0.0.0.0:50051",
        TOKEN_SERVICE_HTTP_ADDR: "0.0.0.0:50052",
        DATABASE_URL: "postgres://token_service:token_service@postgres:5432/token_service",
        TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("k"),
        TOKEN_SERVICE_CONFIG: join(dir, "config.yaml"),
      },
      root,
    );
    rmSync(dir, { recursive: true, force: true });
    expect(config.providers[0]!.clientSecret).toBe(read("examples/compose/demo-client-secret").trim());
    expect(config.providers[0]).toMatchObject({ id: "demo", issuer: "https://demo-provider:9443" });
    // The YAML names the secret by its path inside the container; the file ships beside it.
    expect(read("examples/compose/demo-client-secret").trim()).toBe(
      compose.services["demo-provider"]!.environment!.CLIENT_SECRET,
    );
    const digest = createHash("sha256").update("demo-caller-credential").digest();
    expect(config.callers[0]!.tokenSha256!.equals(digest)).toBe(true);
  });
});

describe("V8 heap flags", () => {
  // One set of flags everywhere the service starts (docs/performance.md, "Memory"): what the benchmarks measured.
  const flags = NODE_HEAP_ARGS.join(" ");
  const pkg = JSON.parse(read("package.json")) as { scripts: Record<string, string> };

  it("are the same in npm start, the token-service command, the image, the Kubernetes example and the test helper", () => {
    expect(NODE_HEAP_ARGS.some((a) => a.startsWith("--max-old-space-size="))).toBe(true);
    expect(NODE_HEAP_ARGS).toContain("--no-allocation-site-pretenuring");
    expect(pkg.scripts.start).toBe(`node ${flags} dist/src/main.js`);
    expect(pkg.scripts.cli).toBe(`node ${flags} dist/src/main.js`);
    expect(read("src/main.ts").split("\n")[0]).toBe(`#!/usr/bin/env -S node ${flags}`);
    expect(read("Dockerfile")).toContain(`ENTRYPOINT ["node", ${NODE_HEAP_ARGS.map((a) => JSON.stringify(a)).join(", ")}, "dist/src/main.js"]`);
    const docs = parseAllDocuments(read("deploy/kubernetes/token-service.yaml")).map((d) => d.toJS() as { kind: string; spec: { template: { spec: { containers: Array<{ command: string[] }> } } } });
    const deployment = docs.find((d) => d.kind === "Deployment")!;
    expect(deployment.spec.template.spec.containers[0]!.command).toEqual(["node", ...NODE_HEAP_ARGS, "dist/src/main.js"]);
    expect(read("docs/performance.md")).toContain(`\`${flags}\``);
    expect(read("docs/deploying.md")).toContain(`\`${flags}\``);
  });
});
