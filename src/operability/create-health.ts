import type { SessionRepository } from "../db/session-repository.js";
import type { Logger } from "../logger.js";
import { PeriodicTask } from "../refresh/periodic.js";
import { HealthState, ServingStatus } from "../rpc/health.js";

/** How long a probe may go unanswered before the database counts as down (a hung connection answers nothing). */
const PROBE_PATIENCE_MS = 5000;

/** The serving status and the database probe that drives it. */
export interface Health {
  readonly state: HealthState;
  /** The probe's last answer, and down while one has waited too long. */
  databaseUp(): boolean;
  /** Starts probing the database every 2 s. */
  start(): void;
  /** Stops the probe. */
  close(): Promise<void>;
}

/** SERVING while the database answers (NOT_SERVING while it fails, SERVING again when it answers) and the service is not draining. */
export function createHealth(deps: { repo: SessionRepository; logger: Logger }): Health {
  const { repo, logger } = deps;
  const state = new HealthState();
  state.setDatabaseUp(true);
  const last = { ok: true, since: 0 };
  const probe = new PeriodicTask(
    "database probe",
    2000,
    async () => {
      last.since = Date.now();
      try {
        await repo.ping().finally(() => (last.since = 0));
        last.ok = true;
        if (state.status !== ServingStatus.SERVING && state.reason === "database unreachable") {
          logger.info("database reachable again: SERVING");
        }
        state.setDatabaseUp(true);
      } catch {
        last.ok = false;
        if (state.reason !== "database unreachable" && state.reason !== "draining") {
          logger.warn("database unreachable: NOT_SERVING");
        }
        state.setDatabaseUp(false);
      }
    },
    logger,
  );
  return {
    state,
    databaseUp: () => last.ok && (last.since === 0 || Date.now() - last.since < PROBE_PATIENCE_MS),
    start: () => probe.start(),
    close: () => probe.stop(),
  };
}
