import { constants, PerformanceObserver } from "node:perf_hooks";
import { Histogram, type Registry } from "prom-client";

export const GC_METRIC = "nodejs_gc_duration_seconds";

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MAJOR]: "major",
  [constants.NODE_PERFORMANCE_GC_MINOR]: "minor",
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: "incremental",
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: "weakcb",
};

/**
 * `nodejs_gc_duration_seconds`, counting every collection.
 *
 * prom-client's default metric of that name (15.1.3) observes only the first
 * entry of each batch its PerformanceObserver is handed. Node hands over the
 * collections of a whole event-loop turn in one batch, so under load, when a
 * turn holds several scavenges, it dropped all but one of them: in one
 * experiment here (turns of 20,000 allocations, a 1 MiB semi-space) it
 * reported 292 of 384 ms of GC.
 * This one has the same name, help, labels and buckets, so dashboards read it
 * as before, and it replaces prom-client's in the registry given.
 */
export class GcMetric {
  private readonly observer: PerformanceObserver;

  constructor(registry: Registry) {
    registry.removeSingleMetric(GC_METRIC);
    const histogram = new Histogram({
      name: GC_METRIC,
      help: "Garbage collection duration by kind, one of major, minor, incremental or weakcb.",
      labelNames: ["kind"],
      buckets: [0.001, 0.01, 0.1, 1, 2, 5],
      registers: [registry],
    });
    const byKind = new Map<number, Histogram.Internal<"kind">>();
    this.observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const kind = (entry as { detail?: { kind?: number } }).detail?.kind ?? 0;
        let child = byKind.get(kind);
        if (!child) byKind.set(kind, (child = histogram.labels(KINDS[kind] ?? "other")));
        child.observe(entry.duration / 1000);
      }
    });
    this.observer.observe({ entryTypes: ["gc"] });
  }

  close(): void {
    this.observer.disconnect();
  }
}
