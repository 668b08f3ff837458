import { startTestProvider, type TestProvider } from "../test/helpers/oidc-provider.js";
import { benchPostgres, type BenchPostgres } from "./database.js";
import { writeSection } from "./report.js";

/** What a section of `npm run bench` needs to run on its own. */
export interface SectionInput {
  provider: TestProvider;
  serverUrl: string;
  rounds: number;
  log: (line: string) => void;
}

/**
 * Runs one section of `npm run bench` on its own (`npm run bench:tracing`, `bench:heap`): a test provider and a
 * throwaway PostgreSQL, BENCH_HOT_ROUNDS rounds (else `rounds`); writes the section to BENCHMARKS.md.
 */
export async function runSectionAlone(name: string, rounds: number, run: (o: SectionInput) => Promise<string>): Promise<void> {
  const provider = await startTestProvider({ accessTokenTtl: 3600 });
  let postgres: BenchPostgres | undefined;
  try {
    postgres = await benchPostgres();
    const section = await run({ provider, serverUrl: postgres.url, rounds: Number(process.env.BENCH_HOT_ROUNDS ?? rounds), log: console.log });
    writeSection(name, section);
    console.log(`\n${section}\nwritten to BENCHMARKS.md`);
  } finally {
    await provider.close();
    await postgres?.destroy();
  }
}
