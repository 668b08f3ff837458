import { mkdirSync, readFileSync, writeFileSync, statSync, chmodSync } from "node:fs";
import { dirname } from "node:path";
import { generateKeySpec, parseKeyRing, type KeyRing } from "./key-ring.js";

/**
 * For the embedded default only: reads the key file beside the database, or
 * creates it (mode 0600) with one new key. Returns the ring and whether the
 * file was created now.
 */
export function loadOrCreateKeyFile(path: string): { ring: KeyRing; created: boolean } {
  let created = false;
  let text: string;
  try {
    text = readFileSync(path, "utf8");
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== "ENOENT") throw err;
    mkdirSync(dirname(path), { recursive: true });
    text = `${generateKeySpec()}\n`;
    try {
      writeFileSync(path, text, { mode: 0o600, flag: "wx" });
      created = true;
    } catch (raceErr) {
      // Another process created it first: use theirs.
      if ((raceErr as NodeJS.ErrnoException).code !== "EEXIST") throw raceErr;
      text = readFileSync(path, "utf8");
    }
  }
  if ((statSync(path).mode & 0o077) !== 0) chmodSync(path, 0o600);
  return { ring: parseKeyRing(text, path), created };
}
