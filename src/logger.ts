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

/**
 * Top level and one level down (`err.token`, `body.refresh_token`). Deeper
 * wildcards cost a walk of every logged object on every line, on the hot path.
 */
const REDACT_PATHS = [...SECRET_KEYS, ...SECRET_KEYS.map((k) => `*.${k}`)];

/**
 * Creates the service logger: JSON lines to `destination` (stdout by default)
 * with every known secret field redacted.
 */
export function createLogger(level: string, destination?: DestinationStream): Logger {
  return pino(
    {
      level,
      base: { service: "token-service" },
      timestamp: pino.stdTimeFunctions.isoTime,
      redact: { paths: REDACT_PATHS, censor: "[redacted]" },
      formatters: { level: (label) => ({ level: label }) },
    },
    destination ?? pino.destination({ dest: 1, sync: false }),
  );
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
