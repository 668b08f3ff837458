import type { Writable } from "node:stream";
import { ConfigError, loadConfig } from "../config.js";
import { sessionRef } from "../logger.js";
import { LIST_LIMIT, sessionHealth } from "../sessions/user-sessions.js";
import { requireUserId } from "../sessions/validation.js";
import { option } from "./args.js";
import { openStore } from "./store.js";
import type { SessionRow } from "../db/session-entity.js";


const iso = (d: Date | null) => (d ? d.toISOString().replace(/\.\d{3}Z$/, "Z") : "-");

/** The STATUS column, in ListSessions' terms (docs/connection-health.md#session-status). */
function statusText(r: SessionRow): string {
  const health = sessionHealth(r);
  if (health === "reauth_required") return `reauth_required (${r.reauthReason ?? "?"}${r.reauthAt ? `, ${iso(r.reauthAt)}` : ""})`;
  if (health === "refresh_failing") {
    const failures = r.refreshFailures ?? 0;
    const since = r.failingSince ? `, since ${iso(r.failingSince)}` : "";
    return `refresh_failing (${failures} ${failures === 1 ? "failure" : "failures"}${since}, last ${r.lastErrorCode ?? "?"})`;
  }
  return health;
}

/**
 * `sessions list --user U [--provider P] [--show-ids] [--include-ended]`: a
 * user's sessions, metadata only, with the status ListSessions shows; with
 * `--include-ended`, then the ended ones still kept (revoked, logged out).
 * Session ids are shown as their short hash unless asked for (they are
 * handles to tokens).
 */
export async function sessionsCommand(args: string[], env: NodeJS.ProcessEnv, out: Writable): Promise<number> {
  if (args[0] !== "list") throw new ConfigError(`sessions: unknown subcommand "${args[0] ?? ""}" (use list)`);
  const user = option(args, "--user");
  if (!user) throw new ConfigError("sessions list: --user is required");
  try {
    requireUserId(user);
  } catch (err) {
    throw new ConfigError(`sessions list: --user ${(err as Error).message.replace(/^user_id: /, "")}`);
  }
  const provider = option(args, "--provider");
  const showIds = args.includes("--show-ids");
  const includeEnded = args.includes("--include-ended");
  const store = await openStore(loadConfig(env));
  try {
    const providers = provider ? [provider] : undefined;
    const rows = await store.repo.listForUser(user, providers, LIST_LIMIT);
    const ended = includeEnded && rows.length < LIST_LIMIT ? await store.repo.listEndedForUser(user, providers, LIST_LIMIT - rows.length) : [];
    const count = rows.length + ended.length;
    if (count === 0) {
      out.write(`no sessions for user ${user}${provider ? ` at ${provider}` : ""}\n`);
      return 0;
    }
    const shown = (id: string) => (showIds ? id : `~${sessionRef(id)}`);
    const header = ["SESSION", "PROVIDER", "STATUS", "CREATED", "LAST USED", "ACCESS EXPIRES", "REFRESH", "KEY"];
    const lines = [
      ...rows.map((r) => [shown(r.id), r.provider, statusText(r), iso(r.createdAt), iso(r.lastUsedAt), iso(r.accessExpiresAt), r.refreshCt ? "yes" : "no", r.keyId]),
      // Ended sessions are kept without tokens or key: what they were, and when and why they ended.
      ...ended.map((r) => [shown(r.id), r.provider, `${r.status} (${r.reason}, ${iso(r.endedAt)})`, iso(r.createdAt), iso(r.lastUsedAt), "-", "-", "-"]),
    ];
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    for (const l of [header, ...lines]) out.write(`${l.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
    out.write(`${count} session${count === 1 ? "" : "s"}${ended.length > 0 ? ` (${ended.length} ended)` : ""}${count === LIST_LIMIT ? ` (first ${LIST_LIMIT})` : ""}\n`);
    return 0;
  } finally {
    await store.close();
  }
}
