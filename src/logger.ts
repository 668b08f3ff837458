import { createHash } from "node:crypto";
import { pino, type DestinationStream, type Logger } from "pino";

export type { Logger } from "pino";

/**
 * Field names that may hold a secret, at any of the depths we log. We never
 * log these on purpose; redaction is the second line of defence.
 */
const SECRET_KEYS = [
  "access_token",
  "accessToken",
  "refresh_token",
  "refreshToken",
  "id_token",
  "idToken",
  "token",
  "tokens",
  "client_secret",
  "clientSecret",
  "authorization",
  "encryptionKeys",
  "password",
  "session_id",
  "sessionId",
];

const SECRET_KEY_SET: ReadonlySet<string> = new Set(SECRET_KEYS);
const CENSOR = "[redacted]";

/** `value` with its secret fields replaced, or `value` itself when it has none (no copy). */
function redactOwn(value: object): object {
  let out: Record<string, unknown> | undefined;
  for (const key of Object.keys(value)) {
    if (SECRET_KEY_SET.has(key)) (out ??= { ...value })[key] = CENSOR;
  }
  return out ?? value;
}

/**
 * Secret fields at the top level and one level down (`err.token`,
 * `body.refresh_token`) replaced by "[redacted]". This is the second line of
 * defence: we never log these fields on purpose. It looks only at the keys
 * of what is logged, so it costs little on the hot path; pino's own `redact`
 * option with wildcard paths (`*.token`) cost 10-15 µs per line, more than
 * the rest of the line.
 */
export function redactSecrets(obj: Record<string, unknown>): Record<string, unknown> {
  let out = redactOwn(obj) as Record<string, unknown>;
  for (const key of Object.keys(out)) {
    const v = out[key];
    if (v === null || typeof v !== "object" || Array.isArray(v)) continue;
    const r = redactOwn(v);
    if (r !== v) {
      if (out === obj) out = { ...obj };
      out[key] = r;
    }
  }
  return out;
}

/**
 * Creates the service logger: JSON lines to `destination` (stdout by default)
 * with every known secret field redacted, in log calls and in child bindings.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "token-service" },
      timestamp: pino.stdTimeFunctions.isoTime,
      // Child bindings (`logger.child({...})`) do not pass through `formatters.log`: pino's own
      // redaction covers them, at the top level only (its wildcard paths are what cost so much).
      redact: { paths: [...SECRET_KEYS], censor: CENSOR },
      formatters: {
        level: (label) => ({ level: label }),
        log: (obj) => redactSecrets(obj),
      },
    },
    destination ?? stdoutDestination(),
  );
}

/**
 * Standard output for the log, written asynchronously, as `pino.destination({ dest: 1, sync: false })` does, but with
 * each line handed over as a Buffer. In its default (utf8) mode sonic-boom appends a line to the text it has not yet
 * written and then measures that text's byte length, which flattens it: while a write is in flight every line copies
 * all the lines before it (about 8.5 KB of garbage per line under load, for lines of about 300 bytes). In buffer
 * mode it keeps the lines in a list and joins them once per write. pino.destination still builds the stream, so
 * the log is still flushed when the process exits and a closed pipe (EPIPE) still ends logging quietly.
 */
export function stdoutDestination(fd = 1): DestinationStream & { flush(cb?: (err?: Error) => void): void; flushSync(): void } {
  const sonic = pino.destination({ dest: fd, sync: false, contentMode: "buffer" });
  // sonic-boom's types name strings only; in buffer mode its write takes a Buffer. Called as a method each time:
  // on EPIPE pino replaces the stream's write with a no-op.
  const buffered = sonic as unknown as { write(data: Buffer): boolean };
  // sonic-boom's own flush returns at once when it buffers nothing on purpose (minLength 0), and its exit-time
  // flushSync writes what waits while an earlier write may still be in flight, which can then land after it. So
  // `flush` here waits for sonic-boom's "drain": it comes when a write ends with nothing left to write.
  let unwritten = false;
  let waiting: Array<() => void> = [];
  sonic.on("drain", () => {
    unwritten = false;
    const done = waiting;
    waiting = [];
    for (const f of done) f();
  });
  return {
    write: (line: string) => {
      unwritten = true;
      buffered.write(Buffer.from(line, "utf8"));
    },
    flush: (cb) => {
      if (!unwritten) cb?.();
      else if (cb) waiting.push(() => cb());
    },
    flushSync: () => sonic.flushSync(),
  };
}

/**
 * Waits until the log has written every line given to it (stdoutDestination's flush), or `timeoutMs` has passed
 * (a stdout that nobody reads, or a closed pipe, must not hold up a shutdown).
 */
export function flushLog(logger: Logger, timeoutMs: number): Promise<void> {
  return new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, timeoutMs);
    timer.unref();
    logger.flush(() => {
      clearTimeout(timer);
      resolve();
    });
  });
}

/**
 * A short, stable, non-reversible reference to a session id for logs and
 * audit lines (the full id is a credential-like handle and is never logged).
 */
export function sessionRef(sessionId: string): string {
  return createHash("sha256").update(sessionId).digest("base64url").slice(0, 12);
}

/** Name and code of an error, for logs that must not carry upstream message text. */
export function errSummary(err: unknown): { name: string; code?: string } {
  if (err && typeof err === "object") {
    const e = err as { name?: unknown; code?: unknown };
    return { name: typeof e.name === "string" ? e.name : "Error", code: typeof e.code === "string" ? e.code : undefined };
  }
  return { name: typeof err };
}
