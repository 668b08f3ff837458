import { HealthImplementation, type ServingStatus as ServingStatusName } from "grpc-health-check";
import { HealthCheckResponse_ServingStatus as Status } from "../../gen/health/v1/health_pb.js";
import { TokenService } from "../../gen/tokenservice/v1/token_service_pb.js";

export { HealthCheckResponse_ServingStatus as ServingStatus } from "../../gen/health/v1/health_pb.js";

/** The services health is reported for: the whole server ("") and the token service. */
export const HEALTH_SERVICES = ["", TokenService.typeName] as const;

/**
 * Serving status of the server. It is SERVING only while the database
 * answers and the server is not draining; every listener (Watch streams,
 * readiness) hears each change.
 */
export class HealthState {
  private databaseUp = false;
  private draining = false;
  private readonly listeners = new Set<(status: Status) => void>();

  get status(): Status {
    return this.databaseUp && !this.draining ? Status.SERVING : Status.NOT_SERVING;
  }

  /** Why we are not serving, for /readyz and logs. */
  get reason(): string {
    if (this.draining) return "draining";
    if (!this.databaseUp) return "database unreachable";
    return "ok";
  }

  setDatabaseUp(up: boolean): void {
    this.update(() => (this.databaseUp = up));
  }

  setDraining(): void {
    this.update(() => (this.draining = true));
  }

  private update(change: () => void): void {
    const before = this.status;
    change();
    const after = this.status;
    if (after !== before) for (const l of [...this.listeners]) l(after);
  }

  /** Follows status changes; returns the unsubscribe function. */
  subscribe(listener: (status: Status) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }
}

const STATUS_NAMES: Record<Status, ServingStatusName> = {
  [Status.UNKNOWN]: "UNKNOWN",
  [Status.SERVING]: "SERVING",
  [Status.NOT_SERVING]: "NOT_SERVING",
  // Only Watch reports it, for a service that is not in the map; never set.
  [Status.SERVICE_UNKNOWN]: "UNKNOWN",
};

/**
 * grpc.health.v1.Health (Check, Watch, List) from `grpc-health-check`,
 * following `state` for the server ("") and the token service.
 */
export function createHealthService(state: HealthState): HealthImplementation {
  const statuses = () => Object.fromEntries(HEALTH_SERVICES.map((s) => [s, STATUS_NAMES[state.status]]));
  const health = new HealthImplementation(statuses());
  state.subscribe((status) => {
    for (const s of HEALTH_SERVICES) health.setStatus(s, STATUS_NAMES[status]);
  });
  return health;
}
