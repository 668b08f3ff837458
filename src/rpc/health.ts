import { create } from "@bufbuild/protobuf";
import { Code, ConnectError, type ServiceImpl } from "@connectrpc/connect";
import {
  Health,
  HealthCheckResponse_ServingStatus as Status,
  HealthCheckResponseSchema,
  HealthListResponseSchema,
} from "../../gen/health/v1/health_pb.js";
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

function statusOf(state: HealthState, service: string): Status | undefined {
  return (HEALTH_SERVICES as readonly string[]).includes(service) ? state.status : undefined;
}

/** grpc.health.v1.Health: Check, Watch (server stream) and List. */
export function createHealthImpl(state: HealthState): ServiceImpl<typeof Health> {
  return {
    check(req) {
      const status = statusOf(state, req.service);
      if (status === undefined) throw new ConnectError("unknown service", Code.NotFound);
      return create(HealthCheckResponseSchema, { status });
    },

    async *watch(req, ctx) {
      // Per the protocol, an unknown service is reported as SERVICE_UNKNOWN and the stream stays open.
      const known = statusOf(state, req.service) !== undefined;
      const queue: Status[] = [known ? state.status : Status.SERVICE_UNKNOWN];
      let wake: (() => void) | undefined;
      const unsubscribe = known
        ? state.subscribe((s) => {
            queue.push(s);
            wake?.();
          })
        : () => false;
      const onAbort = () => wake?.();
      ctx.signal.addEventListener("abort", onAbort);
      try {
        let last: Status | undefined;
        while (!ctx.signal.aborted) {
          const next = queue.shift();
          if (next === undefined) {
            await new Promise<void>((resolve) => (wake = resolve));
            wake = undefined;
            continue;
          }
          if (next === last) continue;
          last = next;
          yield create(HealthCheckResponseSchema, { status: next });
          // Draining: watchers have been told NOT_SERVING; end the stream so it does not hold up the drain.
          if (state.reason === "draining") return;
        }
      } finally {
        unsubscribe();
        ctx.signal.removeEventListener("abort", onAbort);
      }
    },

    list() {
      const statuses: Record<string, ReturnType<typeof create<typeof HealthCheckResponseSchema>>> = {};
      for (const s of HEALTH_SERVICES) statuses[s] = create(HealthCheckResponseSchema, { status: state.status });
      return create(HealthListResponseSchema, { statuses });
    },
  };
}
