import { createHash } from "node:crypto";
import { watch, type FSWatcher } from "node:fs";
import { readFile } from "node:fs/promises";
import { dirname } from "node:path";
import { errSummary, type Logger } from "../logger.js";

export interface FileWatchOptions {
  /** How long after a change event the files are read (events come in bursts). */
  debounceMs?: number;
  /** How often the files are read anyway, in case an event was missed. */
  pollMs?: number;
}

/**
 * Calls `onChange` when the content of any watched file changes and has
 * settled (two reads in a row agree).
 *
 * It watches the directories, not the files: cert-manager and Kubernetes
 * secret mounts replace files by renaming a `..data` symlink to a new
 * directory, and editors save by renaming a new file over the old one, and
 * a watch on the old file would see neither. An event only prompts a read;
 * what counts is whether the content (read through any symlinks) differs
 * from the last content loaded, so unrelated files in the same directory
 * (a SQLite database, say) cost a read of a few small files and nothing
 * more. A slow poll covers what events miss (network file systems, a
 * directory created later). Timers are unref'd and `close` releases every
 * watcher.
 */
export class FileWatcher {
  private files: string[] = [];
  private baseline: string | undefined;
  /** A changed snapshot seen once, waiting for a second read to confirm it settled. */
  private pending: string | undefined;
  private readonly watchers = new Map<string, FSWatcher>();
  private timer: NodeJS.Timeout | undefined;
  private poller: NodeJS.Timeout | undefined;
  private checking: Promise<void> | undefined;
  private closed = false;
  private readonly debounceMs: number;
  private readonly pollMs: number;

  constructor(
    private readonly onChange: () => void,
    private readonly logger: Logger,
    options: FileWatchOptions = {},
  ) {
    this.debounceMs = options.debounceMs ?? 250;
    this.pollMs = options.pollMs ?? 5000;
  }

  /** Watches `files` from now on; `baseline` is the snapshot of the content that was loaded. */
  watch(files: string[], baseline: string): void {
    if (this.closed) return;
    this.files = [...new Set(files)];
    this.baseline = baseline;
    this.pending = undefined;
    this.arm();
    if (!this.poller) {
      this.poller = setInterval(() => {
        this.arm();
        this.schedule(0);
      }, this.pollMs);
      this.poller.unref();
    }
  }

  /** A digest of the files' paths and contents (a missing file counts as its error code). */
  async snapshot(files: string[] = this.files): Promise<string> {
    const hash = createHash("sha256");
    for (const file of [...new Set(files)]) {
      hash.update(file).update("\0");
      try {
        hash.update(createHash("sha256").update(await readFile(file)).digest());
      } catch (err) {
        hash.update(`unreadable:${(err as NodeJS.ErrnoException).code ?? "error"}`);
      }
      hash.update("\0");
    }
    return hash.digest("hex");
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    clearInterval(this.poller);
    for (const w of this.watchers.values()) w.close();
    this.watchers.clear();
  }

  /** One watcher per directory of a watched file; those no longer needed are closed, failed ones retried. */
  private arm(): void {
    const dirs = new Set(this.files.map((f) => dirname(f)));
    for (const [dir, w] of this.watchers) {
      if (!dirs.has(dir)) {
        w.close();
        this.watchers.delete(dir);
      }
    }
    for (const dir of dirs) {
      if (this.watchers.has(dir)) continue;
      try {
        const w = watch(dir, { persistent: false }, () => this.schedule(this.debounceMs));
        w.on("error", () => {
          // The directory went away or the watch broke: polling goes on, and the next poll re-arms.
          w.close();
          if (this.watchers.get(dir) === w) this.watchers.delete(dir);
        });
        this.watchers.set(dir, w);
      } catch (err) {
        this.logger.debug({ dir, err: errSummary(err) }, "cannot watch a configuration directory; polling it");
      }
    }
  }

  /** A read soon; events within the delay share it (the timer is not pushed back, so a busy directory cannot starve it). */
  private schedule(delayMs: number): void {
    if (this.closed || this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = undefined;
      if (this.checking) return this.schedule(this.debounceMs);
      this.checking = this.check().finally(() => (this.checking = undefined));
    }, delayMs);
    this.timer.unref();
  }

  private async check(): Promise<void> {
    const snap = await this.snapshot();
    if (this.closed || snap === this.baseline) {
      this.pending = undefined;
      return;
    }
    if (snap !== this.pending) {
      // Changed, maybe half-written (a cert before its key): look again before acting.
      this.pending = snap;
      this.schedule(this.debounceMs);
      return;
    }
    this.pending = undefined;
    this.baseline = snap;
    this.onChange();
  }
}
