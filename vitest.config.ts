import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    globalSetup: ["test/helpers/global-setup.ts"],
    // MikroORM loads in each test worker as it does in the service: without Node's async hooks (src/db/orm-context.ts).
    setupFiles: ["src/db/orm-context.ts"],
    testTimeout: 60_000,
    hookTimeout: 120_000,
    pool: "forks",
    // Integration files each start servers and databases; two at a time suits a 2-core machine.
    maxWorkers: 2,
    // The second prints one line per optional suite skipped for a missing tool (test/helpers/tools.ts).
    reporters: ["default", "./test/helpers/skip-reporter.ts"],
  },
});
