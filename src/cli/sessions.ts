import type { Writable } from "node:stream";
import { ConfigError, loadConfig } from "../config.js";
import { sessionRef } from "../logger.js";
import { LIST_LIMIT } from "../sessions/user-sessions.js";
import { requireUserId } from "../sessions/validation.js";
import { option } from "./args.js";
import { openStore } from "./store.js";


const iso = (d: Date | null) => (d ? d.toISOString().replace(/\.\d{3}Z$/, "Z") : "-");

/**
 * `sessions list --user U [--provider P] [--show-ids]`: a user's sessions,
 * metadata only. Session ids are shown as their short hash unless asked for
 * (they are handles to tokens).
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
  const store = await openStore(loadConfig(env));
  try {
    const rows = await store.repo.listForUser(user, provider ? [provider] : undefined, LIST_LIMIT);
    if (rows.length === 0) {
      out.write(`no sessions for user ${user}${provider ? ` at ${provider}` : ""}\n`);
      return 0;
    }
    const header = ["SESSION", "PROVIDER", "STATUS", "CREATED", "LAST USED", "ACCESS EXPIRES", "REFRESH", "KEY"];
    const lines = rows.map((r) => [
      showIds ? r.id : `~${sessionRef(r.id)}`,
      r.provider,
      r.status === "active" ? "active" : `reauth (${r.reauthReason ?? "?"})`,
      iso(r.createdAt),
      iso(r.lastUsedAt),
      iso(r.accessExpiresAt),
      r.refreshCt ? "yes" : "no",
      r.keyId,
    ]);
    const widths = header.map((h, i) => Math.max(h.length, ...lines.map((l) => l[i]!.length)));
    for (const l of [header, ...lines]) out.write(`${l.map((c, i) => c.padEnd(widths[i]!)).join("  ").trimEnd()}\n`);
    out.write(`${rows.length} session${rows.length === 1 ? "" : "s"}${rows.length === LIST_LIMIT ? ` (first ${LIST_LIMIT})` : ""}\n`);
    return 0;
  } finally {
    await store.close();
  }
}
