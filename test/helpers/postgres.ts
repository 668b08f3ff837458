import { execFile as execFileCb } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";

const execFile = promisify(execFileCb);

/** A throwaway PostgreSQL cluster in a temporary directory. */
export interface TestPostgres {
  /** Superuser URL of the `postgres` database. */
  readonly url: string;
  readonly port: number;
  /** Fast shutdown; the data directory stays, so `start` brings the same cluster back. */
  stopServer(): Promise<void>;
  startServer(): Promise<void>;
  /** Stops the cluster and deletes its directory. */
  destroy(): Promise<void>;
}

function findBinDir(): string {
  const candidates = [process.env.PG_BINDIR, ...listVersionDirs()].filter((d): d is string => !!d);
  for (const dir of candidates) if (existsSync(join(dir, "initdb"))) return dir;
  throw new Error(
    "PostgreSQL server binaries not found (initdb). Install Debian's postgresql package or set DATABASE_URL / PG_BINDIR.",
  );
}

function listVersionDirs(): string[] {
  const root = "/usr/lib/postgresql";
  if (!existsSync(root)) return [];
  return readdirSync(root)
    .sort((a, b) => Number(b) - Number(a))
    .map((v) => join(root, v, "bin"));
}

/** A TCP port that was free a moment ago. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once("error", reject);
    srv.listen(0, "127.0.0.1", () => {
      const addr = srv.address();
      srv.close(() => resolve(typeof addr === "object" && addr ? addr.port : 0));
    });
  });
}

const asRoot = typeof process.getuid === "function" && process.getuid() === 0;

async function run(bin: string, args: string[]): Promise<string> {
  const [cmd, argv] = asRoot ? ["runuser", ["-u", "postgres", "--", bin, ...args]] : [bin, args];
  const { stdout } = await execFile(cmd, argv, { maxBuffer: 16 * 1024 * 1024 });
  return stdout;
}

/**
 * Creates and starts a cluster owned by `postgres` (when running as root) with
 * trust authentication on 127.0.0.1, durability off for speed.
 */
export async function startPostgres(): Promise<TestPostgres> {
  const bin = findBinDir();
  const dir = mkdtempSync(join(tmpdir(), "token-service-pg-"));
  const data = join(dir, "data");
  if (asRoot) {
    const { stdout } = await execFile("id", ["-u", "postgres"]);
    const { stdout: gid } = await execFile("id", ["-g", "postgres"]);
    chownSync(dir, Number(stdout.trim()), Number(gid.trim()));
  }
  await run(join(bin, "initdb"), ["-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"]);
  const port = await freePort();
  const opts = [
    `-p ${port}`,
    `-k ${dir}`,
    "-c listen_addresses=127.0.0.1",
    "-c fsync=off",
    "-c synchronous_commit=off",
    "-c full_page_writes=off",
    "-c max_connections=300",
  ].join(" ");
  const startServer = async () => {
    await run(join(bin, "pg_ctl"), ["-D", data, "-o", opts, "-l", join(dir, "server.log"), "-w", "-t", "60", "start"]);
  };
  const stopServer = async () => {
    await run(join(bin, "pg_ctl"), ["-D", data, "-m", "fast", "-w", "-t", "60", "stop"]);
  };
  await startServer();
  return {
    url: `postgres://postgres@127.0.0.1:${port}/postgres`,
    port,
    startServer,
    stopServer,
    destroy: async () => {
      await stopServer().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
