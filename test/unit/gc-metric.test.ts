import { PerformanceObserver } from "node:perf_hooks";
import { setTimeout as sleep } from "node:timers/promises";
import { collectDefaultMetrics, Registry } from "prom-client";
import { describe, expect, it } from "vitest";
import { Metrics, type MetricSources } from "../../src/metrics.js";
import { GC_METRIC, GcMetric } from "../../src/operability/gc-metric.js";

/** Collections the registry's GC histogram has counted, over all kinds. */
async function counted(registry: Registry): Promise<number> {
  const metric = registry.getSingleMetric(GC_METRIC);
  if (!metric) throw new Error(`${GC_METRIC} is not registered`);
  const values = (await metric.get()).values as Array<{ metricName?: string; value: number }>;
  return values.filter((v) => v.metricName === `${GC_METRIC}_count`).reduce((sum, v) => sum + v.value, 0);
}

/**
 * Turns that each allocate enough for several young-generation collections,
 * so that Node hands the observers several collections in one batch. Returns
 * how many collections an observer of every entry saw, and in how many batches.
 */
async function collect(turns: number): Promise<{ collections: number; batches: number }> {
  let collections = 0;
  let batches = 0;
  const witness = new PerformanceObserver((list) => {
    batches++;
    collections += list.getEntries().length;
  });
  witness.observe({ entryTypes: ["gc"] });
  let keep: unknown[] = [];
  for (let t = 0; t < turns; t++) {
    // About 60 MB of short-lived objects: more than one semi-space's worth at any V8 default.
    for (let i = 0; i < 600_000; i++) {
      keep.push({ i, pair: [i, i + 1] });
      if (keep.length > 4096) keep = [];
    }
    await sleep(5);
  }
  await sleep(50);
  witness.disconnect();
  return { collections, batches };
}

describe("nodejs_gc_duration_seconds", () => {
  it("counts every collection, where prom-client's own counts one a batch", async () => {
    const ours = new Registry();
    collectDefaultMetrics({ register: ours });
    const gc = new GcMetric(ours);
    const theirs = new Registry();
    collectDefaultMetrics({ register: theirs });
    try {
      const before = { ours: await counted(ours), theirs: await counted(theirs) };
      const seen = await collect(8);
      const ourCount = (await counted(ours)) - before.ours;
      const theirCount = (await counted(theirs)) - before.theirs;
      // The load put several collections in a batch; otherwise this test would prove nothing.
      expect(seen.collections).toBeGreaterThan(seen.batches);
      expect(ourCount).toBe(seen.collections);
      // prom-client 15.1.3 observes the first entry of each batch only: what this module is for.
      expect(theirCount).toBeLessThan(seen.collections);
    } finally {
      gc.close();
    }
  });

  it("is one histogram in the service's registry, with its kinds, and stops counting once closed", async () => {
    const zero = () => 0;
    const sources: MetricSources = {
      coalesced: zero,
      takeovers: zero,
      inflightRefreshes: zero,
      cacheEntries: zero,
      cacheHits: zero,
      cacheMisses: zero,
      cacheDeclined: zero,
      serving: () => true,
      databaseUp: () => true,
      pools: () => ({ write: { used: 0, idle: 0, waiting: 0 }, read: { used: 0, idle: 0, waiting: 0 } }),
      eventWatchers: zero,
    };
    const metrics = new Metrics(sources);
    await collect(2);
    const text = await metrics.registry.metrics();
    expect(text.match(new RegExp(`^# TYPE ${GC_METRIC} histogram$`, "gm"))).toHaveLength(1);
    expect(text).toMatch(new RegExp(`^${GC_METRIC}_count\\{kind="minor"\\} [1-9]\\d*$`, "m"));
    metrics.close();
    const after = await counted(metrics.registry);
    await collect(2);
    expect(await counted(metrics.registry)).toBe(after);
  });
});
