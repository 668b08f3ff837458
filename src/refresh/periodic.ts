import { errSummary, type Logger } from "../logger.js";

/**
 * Runs `fn` every `intervalMs` (plus up to 10 % jitter, so replicas drift
 * apart), one run at a time. A failing run is logged once per failure streak
 * and the schedule goes on. Timers are unref'd: they never keep a process up.
 */
export class PeriodicTask {
  private timer: NodeJS.Timeout | undefined;
  private current: Promise<void> | undefined;
  private stopped = true;
  private failing = false;

  constructor(
    private readonly name: string,
    private readonly intervalMs: number,
    private readonly fn: () => Promise<void>,
    private readonly logger: Logger,
  ) {}

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.schedule();
  }

  private schedule(): void {
    if (this.stopped) return;
    const delay = this.intervalMs * (1 + Math.random() * 0.1);
    this.timer = setTimeout(() => {
      this.current = this.runOnce().finally(() => {
        this.current = undefined;
        this.schedule();
      });
    }, delay);
    this.timer.unref();
  }

  private async runOnce(): Promise<void> {
    try {
      await this.fn();
      if (this.failing) this.logger.info({ task: this.name }, "periodic task recovered");
      this.failing = false;
    } catch (err) {
      if (!this.failing) this.logger.warn({ task: this.name, err: errSummary(err) }, "periodic task failed; will retry");
      this.failing = true;
    }
  }

  async stop(): Promise<void> {
    this.stopped = true;
    if (this.timer) clearTimeout(this.timer);
    await this.current;
  }
}
