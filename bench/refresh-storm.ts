/**
 * Refresh storm: N concurrent GetToken calls on an expired session, spread
 * over R replicas on one PostgreSQL, against an oidc-provider whose token
 * endpoint takes a fixed extra latency. Reports the provider calls made and
 * the slowest caller against the provider's own latency, a timeline of each
 * storm from the replicas' logs, the same burst of empty RPCs as a floor, and
 * a CPU profile of further storms (BENCH_PROFILE_RUNS, 0 for none).
 *
 *   npm run bench:storm                   # N=1000 and N=100, R=3, 5 runs, 200 ms provider latency
 *   BENCH_CALLERS=500 BENCH_REPLICAS=2 BENCH_RUNS=3 BENCH_PROVIDER_MS=100 BENCH_PROFILE_RUNS=0 npm run bench:storm
 */
import { mkdtempSync, readdirSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { timestampFromDate } from "@bufbuild/protobuf/wkt";
import { stringify } from "yaml";
import { generateKeySpec } from "../src/crypto/key-ring.js";
import { sessionRef } from "../src/logger.js";
import { connectGrpcClient } from "../test/helpers/clients.js";
import { startTestProvider, type TestProvider } from "../test/helpers/oidc-provider.js";
import { startPostgres, type TestPostgres } from "../test/helpers/postgres.js";
import { spawnService, type ServiceProcess } from "../test/helpers/process.js";
import { createTestDatabase } from "../test/helpers/service.js";
import { GetTokenRequestSchema } from "../gen/tokenservice/v1/token_service_pb.js";
import { loadavg } from "./proc-stats.js";
import { profileShare, profileTable, RPC_STACK_CATEGORIES, summarizeProfiles, type ProfileSummary } from "./profile.js";
import { fmt, machine, median, writeSection } from "./report.js";
import { EMPTY_FRAME, grpcFrame, runLoadProcess } from "./run-load.js";

const N = Number(process.env.BENCH_CALLERS ?? 1000);
const R = Number(process.env.BENCH_REPLICAS ?? 3);
const RUNS = Number(process.env.BENCH_RUNS ?? 5);
const PROVIDER_MS = Number(process.env.BENCH_PROVIDER_MS ?? 200);
const PROFILE_RUNS = Number(process.env.BENCH_PROFILE_RUNS ?? 3);

/** Milliseconds after the load generator sent the first call, from the replicas' logs. */
export interface StormTimeline {
  /** The first call reached a replica's RPC stack. */
  firstIn: number;
  /** The last call reached a replica's RPC stack. */
  lastIn: number;
  /** The refreshing replica held the lease and called the provider. */
  refreshStart: number;
  /** The refresh request reached the provider (its own clock; same machine). */
  providerIn: number;
  /** The new tokens were stored. */
  stored: number;
  /** The first caller was answered. */
  firstOut: number;
  /** The last caller was answered. */
  lastOut: number;
  /** The first answer's headers reached the load generator (its own clock; same machine). */
  firstAtLoadgen: number;
  /** The last answer reached the load generator. */
  lastAtLoadgen: number;
}

export interface StormRun {
  timeline: StormTimeline;
  /** From the refresh being stored to the last caller answered, over all replicas (from their logs). */
  fanOutMs: number;
  /** The refresh as the refreshing replica timed it: lease taken to new tokens stored. */
  refreshMs: number;
  providerCalls: number;
  invalidGrants: number;
  providerMs: number;
  slowestMs: number;
  p50Ms: number;
  errors: number;
  /** The slowest caller of a burst of as many empty RPCs (Health/Check) on the same replicas: the floor. */
  emptySlowestMs: number;
  /** The longest the load generator's event loop was held up, in the storm and in the empty burst (ms). */
  loadgenLoopMaxMs: number;
  emptyLoadgenLoopMaxMs: number;
  /** Wall-clock span of the storm (epoch ms), to pick its samples out of CPU profiles. */
  window: [number, number];
}

export interface StormSummary {
  callers: number;
  replicas: number;
  providerDelayMs: number;
  runs: StormRun[];
  /**
   * The same refresh for a lone caller on the same replicas, right after the storms: what the refresh path costs
   * beyond the provider with nothing else to do, against which the storm's parts can be read.
   */
  lone: StormRun[];
  /** Each replica's first and second refresh before the storms (lease to stored, ms). */
  warm: { firstMs: number[]; secondMs: number[] };
  profile?: ProfileSummary;
  markdown: string;
}

export interface StormOptions {
  callers: number;
  replicas: number;
  runs: number;
  providerMs: number;
  /** Storms to run again on CPU-profiled replicas, after the timed runs (0: no profile). */
  profileRuns?: number;
}


/**
 * Every replica refreshes a session of its own twice (forced), before any storm: a storm is refreshed by one
 * replica, and which one is the first whose lease statement commits, so without this each replica's first storm
 * would be its first refresh, with the refresh path's code not yet compiled (not what a running cluster sees).
 * Returns each replica's lease-to-stored time of both, from its log.
 */
async function warmRefreshPaths(
  procs: ServiceProcess[],
  clients: ReturnType<typeof connectGrpcClient>[],
  provider: TestProvider,
): Promise<StormSummary["warm"]> {
  const firstMs: number[] = [];
  const secondMs: number[] = [];
  for (const [i, c] of clients.entries()) {
    const user = `bench-warm-${i}`;
    const tokens = await provider.login(user);
    const { sessionId } = await clients[0]!.storeSession({
      userId: user,
      provider: "corp",
      tokens: { accessToken: tokens.access_token, refreshToken: tokens.refresh_token, expiresIn: 3600n },
    });
    const sid = sessionRef(sessionId);
    const refreshed = () => procs[i]!.lines().filter((l) => l.msg === "session refreshed" && l.sid === sid);
    for (const [n, into] of [firstMs, secondMs].entries()) {
      await c.getToken({ userId: user, sessionId, forceRefresh: true });
      await procs[i]!.waitForLine(() => refreshed().length > n, 10_000);
      into.push(Number(refreshed()[n]!.ms));
    }
  }
  return { firstMs, secondMs };
}

/** One storm on `procs`: an expired session, `callers` GetToken calls at once, then as many Health/Check calls. */
async function storm(
  procs: ServiceProcess[],
  clients: ReturnType<typeof connectGrpcClient>[],
  provider: TestProvider,
  label: string,
  options: StormOptions,
): Promise<StormRun> {
  const user = `bench-${label}`;
  const tokens = await provider.login(user);
  const { sessionId } = await clients[0]!.storeSession({
    userId: user,
    provider: "corp",
    tokens: {
      accessToken: tokens.access_token,
      refreshToken: tokens.refresh_token,
      expiresAt: timestampFromDate(new Date(Date.now() - 1000)),
    },
  });
  // Warm each replica's connection and the provider's discovery cache with a fresh session.
  for (const c of clients) {
    const warm = await clients[0]!.storeSession({ userId: user, provider: "corp", tokens: { accessToken: "warm", expiresIn: 3600n } });
    await c.getToken({ userId: user, sessionId: warm.sessionId });
  }
  provider.resetStats();
  provider.faults.push({ kind: "delay", ms: options.providerMs });
  const frame = grpcFrame(GetTokenRequestSchema, { userId: user, sessionId });
  const seen = procs.map((p) => p.lines().length);
  const load = await runLoadProcess({
    mode: "burst",
    targets: procs.map((p) => ({ url: p.url, path: "/tokenservice.v1.TokenService/GetToken", frame })),
    connections: 1,
    requests: options.callers,
    collectBodies: true,
    warmupCalls: 200,
  });
  const window: [number, number] = [load.startedAt, load.startedAt + load.maxMs + 20];
  if (load.distinctBodies && load.distinctBodies.length > 1) throw new Error("callers got different tokens");
  const empty = await runLoadProcess({
    mode: "burst",
    targets: procs.map((p) => ({ url: p.url, path: "/grpc.health.v1.Health/Check", frame: EMPTY_FRAME })),
    connections: 1,
    requests: options.callers,
    warmupCalls: 200,
  });
  if (empty.ok !== empty.requests) throw new Error(`Health/Check burst: ${JSON.stringify(empty.errors)}`);

  const lines = procs.flatMap((p, i) => p.lines().slice(seen[i]));
  const at = (l: Record<string, unknown>) => Date.parse(String(l.time));
  const refreshed = lines.filter((l) => l.msg === "session refreshed");
  const refreshedAt = Math.min(...refreshed.map(at));
  const refreshMs = Number(refreshed[0]?.ms ?? NaN);
  // The storm's calls (warm-up calls logged late are left out); the log's clock has whole milliseconds.
  const rpcs = lines.filter((l) => l.msg === "rpc" && String(l.rpc).endsWith("/GetToken") && at(l) - Number(l.ms) >= load.startedAt - 1);
  const startsAt = rpcs.map((l) => at(l) - Number(l.ms));
  const answeredAt = rpcs.map(at);
  const lastAnswerAt = Math.max(...answeredAt);
  const since = (t: number) => Math.round(t - load.startedAt);
  return {
    timeline: {
      firstIn: since(Math.min(...startsAt)),
      lastIn: since(Math.max(...startsAt)),
      refreshStart: since(refreshedAt - refreshMs),
      providerIn: since(provider.stats.refreshArrivedAt[0] ?? NaN),
      stored: since(refreshedAt),
      firstOut: since(Math.min(...answeredAt)),
      lastOut: since(lastAnswerAt),
      firstAtLoadgen: Math.round(load.firstAnswerMs ?? NaN),
      lastAtLoadgen: Math.round(load.durationMs),
    },
    fanOutMs: lastAnswerAt - refreshedAt,
    refreshMs,
    providerCalls: provider.stats.refreshes,
    invalidGrants: provider.stats.invalidGrants,
    providerMs: provider.stats.refreshMs[0] ?? NaN,
    slowestMs: load.maxMs,
    p50Ms: load.p50Ms,
    errors: load.requests - load.ok,
    emptySlowestMs: empty.maxMs,
    loadgenLoopMaxMs: load.loopDelayMaxMs ?? NaN,
    emptyLoadgenLoopMaxMs: empty.loopDelayMaxMs ?? NaN,
    window,
  };
}

/** Runs the storm benchmark and returns its figures and a Markdown section. */
export async function runRefreshStorm(
  options: StormOptions = { callers: N, replicas: R, runs: RUNS, providerMs: PROVIDER_MS, profileRuns: PROFILE_RUNS },
): Promise<StormSummary> {
  const loadBefore = loadavg();
  const dir = mkdtempSync(join(tmpdir(), "token-service-bench-"));
  let pgServer: TestPostgres | undefined;
  const procs: ServiceProcess[] = [];
  const provider = await startTestProvider();
  try {
    let serverUrl = process.env.DATABASE_URL;
    if (!serverUrl?.startsWith("postgres")) {
      pgServer = await startPostgres();
      serverUrl = pgServer.url;
    }
    const databaseUrl = await createTestDatabase(serverUrl);
    const configFile = join(dir, "config.yaml");
    writeFileSync(
      configFile,
      stringify({
        providers: [
          provider.configEntry(),
        ],
        // Background refresh would refresh the expired session before the storm; measure the cold path.
        refresh: { background: { enabled: false } },
        log_level: "warn",
      }),
    );
    const env = {
      DATABASE_URL: databaseUrl,
      TOKEN_SERVICE_ENCRYPTION_KEYS: generateKeySpec("bench"),
      TOKEN_SERVICE_CONFIG: configFile,
      TOKEN_SERVICE_LOG_LEVEL: "info",
    };
    const startReplicas = async (nodeArgs: (i: number) => string[]) => {
      for (let i = 0; i < options.replicas; i++) procs.push(await spawnService(env, { nodeArgs: nodeArgs(i) }));
      return procs.map((p) => connectGrpcClient(p.url));
    };

    const runs: StormRun[] = [];
    let clients = await startReplicas(() => []);
    const warm = await warmRefreshPaths(procs, clients, provider);
    console.log(`each replica's first refresh, lease to stored: ${warm.firstMs.join(", ")} ms; its second: ${warm.secondMs.join(", ")} ms`);
    for (let run = 0; run <= options.runs; run++) {
      const result = await storm(procs, clients, provider, String(run), options);
      if (run > 0) runs.push(result); // run 0 warms up the JIT and connections
      const t = result.timeline;
      console.log(
        `run ${run}${run === 0 ? " (warm-up)" : ""}: provider calls ${result.providerCalls}, provider ${fmt(result.providerMs)} ms, ` +
          `slowest caller ${fmt(result.slowestMs)} ms (empty RPC burst: ${fmt(result.emptySlowestMs)} ms), p50 ${fmt(result.p50Ms)} ms, errors ${result.errors}; ` +
          `ms after the first send: calls in ${t.firstIn}–${t.lastIn}, refresh ${t.refreshStart}–${t.stored}, answers ${t.firstOut}–${t.lastOut}, ` +
          `at the load generator ${t.firstAtLoadgen}–${t.lastAtLoadgen} (its loop held up to ${fmt(result.loadgenLoopMaxMs)} ms)`,
      );
    }

    const lone: StormRun[] = [];
    for (let run = 0; run < options.runs; run++) {
      const result = await storm(procs, clients, provider, `lone-${run}`, { ...options, callers: 1 });
      // No column says so in its table: a lone run that failed must not be read as a figure.
      if (result.errors > 0 || result.providerCalls !== 1 || Number.isNaN(result.refreshMs)) {
        throw new Error(`lone caller ${run + 1}: ${result.errors} errors, ${result.providerCalls} provider calls, refresh logged: ${!Number.isNaN(result.refreshMs)}`);
      }
      lone.push(result);
      const t = result.timeline;
      console.log(
        `lone caller ${run + 1}: provider calls ${result.providerCalls}, invalid_grant ${result.invalidGrants}, errors ${result.errors}, provider ${fmt(result.providerMs)} ms, caller ${fmt(result.slowestMs)} ms (empty RPC: ${fmt(result.emptySlowestMs)} ms); ` +
          `refresh ${t.refreshStart}–${t.stored}, request at the provider ${t.providerIn}, answered ${t.lastOut}`,
      );
    }

    let profile: ProfileSummary | undefined;
    if (options.profileRuns) {
      // Profiled replicas, apart from the timed runs (the profiler costs a little CPU itself).
      for (const p of procs.splice(0)) p.kill("SIGKILL");
      const profileDirs = Array.from({ length: options.replicas }, (_, i) => join(dir, `profile-${i}`));
      clients = await startReplicas((i) => ["--cpu-prof", `--cpu-prof-dir=${profileDirs[i]}`]);
      await warmRefreshPaths(procs, clients, provider);
      const windows: Array<[number, number]> = [];
      for (let run = 0; run <= options.profileRuns; run++) {
        const result = await storm(procs, clients, provider, `profile-${run}`, options);
        if (run > 0) windows.push(result.window);
      }
      // A profile is written on a clean exit; its end is placed on the wall clock when the process exits.
      const stopped = procs.map((p) => p.exited.then(() => Date.now()));
      for (const p of procs) p.kill("SIGTERM");
      const stoppedAt = await Promise.all(stopped);
      procs.splice(0);
      const files = profileDirs.map((d, i) => ({ path: join(d, readdirSync(d).find((f) => f.endsWith(".cpuprofile"))!), stoppedAt: stoppedAt[i]! }));
      profile = summarizeProfiles(files, windows);
      console.log(`\nCPU profile of ${options.profileRuns} storms on all replicas:\n${profileTable(profile)}\n${profile.functions.map(([n, ms]) => `${ms.toFixed(0)} ${n}`).join("\n")}`);
    }
    return {
      callers: options.callers,
      replicas: options.replicas,
      providerDelayMs: options.providerMs,
      runs,
      lone,
      warm,
      profile,
      markdown: stormMarkdown(options, runs, lone, warm, profile, `${loadBefore} → ${loadavg()}`),
    };
  } finally {
    for (const p of procs) p.kill("SIGKILL");
    await provider.close();
    await pgServer?.destroy();
    rmSync(dir, { recursive: true, force: true });
  }
}

/**
 * The target for the storm's excess over its floor (issue 21): slowest caller − provider latency − slowest
 * caller of the empty-RPC burst, at most 60 ms for 1,000 callers over 3 replicas, 10 ms for 100.
 */
export function stormTargetMs(callers: number): number {
  return callers >= 1000 ? 60 : 10;
}

/** A storm's excess over the empty-RPC floor of the same size and spread: what the refresh path adds. */
export function stormExcessMs(r: Pick<StormRun, "slowestMs" | "providerMs" | "emptySlowestMs">): number {
  return r.slowestMs - r.providerMs - r.emptySlowestMs;
}

function stormMarkdown(
  options: StormOptions,
  runs: StormRun[],
  lone: StormRun[],
  warm: StormSummary["warm"],
  profile: ProfileSummary | undefined,
  load: string,
): string {
  const med = (f: (r: StormRun) => number) => median(runs.map(f));
  const target = stormTargetMs(options.callers);
  const overhead = med((r) => r.slowestMs - r.providerMs);
  const maxCalls = Math.max(...runs.map((r) => r.providerCalls));
  const share = (pred: (name: string) => boolean) => (profile ? profileShare(profile, pred) : NaN);
  const rpcShare = share((n) => RPC_STACK_CATEGORIES.has(n) || n === "garbage collection" || n.startsWith("V8"));
  const ownShare = share((n) => n.startsWith("token service"));
  const floor = med((r) => r.emptySlowestMs);
  const excess = med(stormExcessMs);
  const lastIn = med((r) => r.timeline.lastIn);
  /** The storm's parts beside a lone caller's on the same replicas (medians, ms). */
  const partRows: Array<[string, (r: StormRun) => number]> = [
    ["first call sent → the refresh began (session read, lease)", (r) => r.timeline.refreshStart],
    ["the lease → the request at the provider", (r) => r.timeline.providerIn - r.timeline.refreshStart],
    ["the provider's answer → the new tokens stored", (r) => r.timeline.stored - r.timeline.providerIn - r.providerMs],
    ["stored → the last answer logged", (r) => r.fanOutMs],
    ["the last answer logged → at the load generator", (r) => r.timeline.lastAtLoadgen - r.timeline.lastOut],
    ["slowest caller − provider latency", (r) => r.slowestMs - r.providerMs],
    ["empty RPC (one, or a burst of as many), slowest", (r) => r.emptySlowestMs],
    ["excess: slowest − provider − empty", stormExcessMs],
  ];
  const loneMed = (f: (r: StormRun) => number) => median(lone.map(f));
  const loneText = lone.length
    ? `
A lone caller on the same replicas, right after the storms (${lone.length} runs: one GetToken on an expired session, the
provider's ${options.providerMs} ms as in the storms, then one empty RPC), beside the storm's parts; medians, and log
times have whole milliseconds:

| part (ms) | lone caller | storm of ${options.callers} |
|---|---|---|
${partRows.map(([name, f]) => `| ${name} | ${fmt(loneMed(f))} | ${fmt(med(f))} |`).join("\n")}
`
    : "";
  const profileText = profile
    ? `
### Where the CPU goes during a storm

${options.profileRuns} more storms on replicas started with \`node --cpu-prof\` (not the timed runs above; the
profiler costs a little itself), samples inside the storms only, all ${options.replicas} replicas together
(\`bench/profile.ts\` sorts them by the file each function comes from):

${profileTable(profile)}

Busiest functions: ${profile.functions
        .slice(0, 8)
        .map(([name, ms]) => `\`${name}\` ${ms.toFixed(0)} ms`)
        .join(", ")}.
`
    : "";
  return `## Refresh storm: ${options.callers} callers (\`npm run bench:storm\`)

${options.callers} concurrent GetToken calls on one expired session, spread round-robin over ${options.replicas} replicas
(separate processes) on one PostgreSQL, sent by the load generator (\`bench/loadgen.ts\`, its own process:
raw HTTP/2, one connection per replica, every answer checked by grpc-status and all tokens compared; it
warms its own JIT with 200 Health/Check calls per connection first, then writes the burst 50 streams per
event-loop turn, and each call's clock starts as its stream is built). The provider's token endpoint adds
${options.providerMs} ms. Background refresh off (cold path). Right after each storm, a burst of as many
\`grpc.health.v1.Health/Check\` calls (the empty RPC) goes to the same replicas: its slowest caller is the
floor for any burst of that size on this machine. ${runs.length} runs after one warm-up; medians. Before the
storms every replica refreshed a session of its own twice (forced), since any replica may be the one that refreshes
a storm: a replica's first refresh took ${warm.firstMs.join(", ")} ms from lease to stored, its second
${warm.secondMs.join(", ")} ms (the provider's delay is not applied to these).

- Machine: ${machine()}; load average before → after: ${load}; run on ${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC
- Command: \`BENCH_CALLERS=${options.callers} BENCH_REPLICAS=${options.replicas} BENCH_RUNS=${options.runs} BENCH_PROVIDER_MS=${options.providerMs} npm run bench:storm\`

| run | provider calls | invalid_grant | provider latency (ms) | slowest caller (ms) | slowest − provider (ms) | p50 caller (ms) | empty-RPC burst, slowest (ms) | excess: slowest − provider − empty burst (ms) | errors |
|---|---|---|---|---|---|---|---|---|---|
${runs.map((r, i) => `| ${i + 1} | ${r.providerCalls} | ${r.invalidGrants} | ${fmt(r.providerMs)} | ${fmt(r.slowestMs)} | ${fmt(r.slowestMs - r.providerMs)} | ${fmt(r.p50Ms)} | ${fmt(r.emptySlowestMs)} | ${fmt(stormExcessMs(r))} | ${r.errors} |`).join("\n")}
| **median** | ${med((r) => r.providerCalls)} | ${med((r) => r.invalidGrants)} | ${fmt(med((r) => r.providerMs))} | ${fmt(med((r) => r.slowestMs))} | ${fmt(overhead)} | ${fmt(med((r) => r.p50Ms))} | ${fmt(floor)} | **${fmt(excess)}** | ${med((r) => r.errors)} |

Timeline of each storm from the replicas' logs, in ms after the load generator sent the first call (log
times have whole milliseconds): when calls reached a replica's RPC stack, when the refreshing replica held
the lease and called the provider, when the new tokens were stored, and when the first and the last caller were
answered; then, from the load generator, when the first and the last answer reached it, and the longest its event
loop was held up from the first answer on, in the storm and in the empty burst.

| run | first call in | last call in | refresh began | request at the provider | new tokens stored | refresh, lease to stored | first answer | last answer | first / last answer at the load generator | its loop held up, storm / empty burst |
|---|---|---|---|---|---|---|---|---|---|---|
${runs.map((r, i) => `| ${i + 1} | ${r.timeline.firstIn} | ${r.timeline.lastIn} | ${r.timeline.refreshStart} | ${r.timeline.providerIn} | ${r.timeline.stored} | ${r.refreshMs} | ${r.timeline.firstOut} | ${r.timeline.lastOut} | ${r.timeline.firstAtLoadgen} / ${r.timeline.lastAtLoadgen} | ${fmt(r.loadgenLoopMaxMs)} / ${fmt(r.emptyLoadgenLoopMaxMs)} |`).join("\n")}
| **median** | ${med((r) => r.timeline.firstIn)} | **${lastIn}** | ${med((r) => r.timeline.refreshStart)} | ${med((r) => r.timeline.providerIn)} | ${med((r) => r.timeline.stored)} | ${med((r) => r.refreshMs)} | ${med((r) => r.timeline.firstOut)} | ${med((r) => r.timeline.lastOut)} | ${med((r) => r.timeline.firstAtLoadgen)} / ${med((r) => r.timeline.lastAtLoadgen)} | ${fmt(med((r) => r.loadgenLoopMaxMs))} / ${fmt(med((r) => r.emptyLoadgenLoopMaxMs))} |
${profileText}
Targets (issue 21): 1 provider call per storm (${maxCalls === 1 ? "met in every run" : `NOT met: up to ${maxCalls}`}); 0 invalid_grant
(${runs.every((r) => r.invalidGrants === 0) ? "met in every run" : "NOT met"}); the storm's excess over the empty-RPC floor, slowest caller − provider
latency − slowest empty-burst caller, at most ${target} ms (${excess <= target ? "met" : "NOT met"}: median ${fmt(excess)} ms; per run ${runs.map((r) => fmt(stormExcessMs(r))).join(", ")} ms).

Where the +${fmt(overhead)} ms go (medians of each part, so they need not add up exactly):
- ${med((r) => r.timeline.refreshStart)} ms until the refresh began: the first calls' session read and the lease, each a
  database round trip that waits its turn while the replicas take in the burst;
- ${fmt(med((r) => r.refreshMs - r.providerMs))} ms of the refresh beyond the provider's own time, each part waiting its turn on a replica that is
  also taking in the burst: ${fmt(med((r) => r.timeline.providerIn - r.timeline.refreshStart))} ms from the lease to the request reaching the provider's middleware (openid-client
  and undici in the replica, a TCP connection when the replica has none open to the provider, and the provider's own turn: it runs in
  the benchmark's process, which also reads the replicas' logs), and ${fmt(med((r) => r.timeline.stored - r.timeline.providerIn - r.providerMs))} ms from the provider's answer to the new tokens
  stored (reading the answer, sealing and the compare-and-set write); the log's whole milliseconds make either ±1;
- ${med((r) => r.fanOutMs)} ms from the new tokens stored to the last answer logged (the other replicas wake on \`NOTIFY\`,
  read the row and answer their waiting callers, while still reading calls off the wire);
- ${med((r) => r.timeline.lastAtLoadgen - r.timeline.lastOut)} ms from the last answer logged to the last answer at the load generator (answers
  leave a replica 16 an event-loop turn, first come first served, so the last answered is one of the last sent, not
  the slowest caller): the first answer's headers reached it
  ${med((r) => r.timeline.firstAtLoadgen - r.timeline.firstOut)} ms after the first answer was logged, and from then on its event loop was held up to
  ${fmt(med((r) => r.loadgenLoopMaxMs))} ms at a time (a socket read's frames are handled in one go), against ${fmt(med((r) => r.emptyLoadgenLoopMaxMs))} ms in the
  empty burst, whose answers come in as its calls go out.
${loneText}
The floor: the last call reached a replica's RPC stack ${lastIn} ms after the first was sent, and a burst of as many
empty RPCs has its slowest caller at ${fmt(floor)} ms: the excess is what the storm adds beyond that floor and the provider's time.${
    profile
      ? ` During the storms ${fmt(rpcShare)} % of the replicas' busy CPU went to the RPC stack,
garbage collection and the event loop, and ${fmt(ownShare)} % to the service's own code.`
      : ""
  }
`;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const custom = process.env.BENCH_CALLERS !== undefined;
  // The target scenario, and a smaller storm that the machine can ingest within the provider call.
  const scenarios = custom ? [N] : [1000, 100];
  const parts: string[] = [];
  for (const callers of scenarios) {
    console.log(`\n== ${callers} callers over ${R} replicas`);
    parts.push((await runRefreshStorm({ callers, replicas: R, runs: RUNS, providerMs: PROVIDER_MS, profileRuns: PROFILE_RUNS })).markdown);
  }
  const markdown = parts.join("\n");
  writeSection("refresh", markdown);
  console.log(`\n${markdown}\nwritten to BENCHMARKS.md`);
}
