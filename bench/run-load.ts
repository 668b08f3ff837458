import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { create, toBinary, type DescMessage, type MessageInitShape } from "@bufbuild/protobuf";
import type { LoadResult, LoadSpec } from "./loadgen.js";

const loadgen = fileURLToPath(new URL("./loadgen.ts", import.meta.url));

/** A gRPC length-prefixed frame of one message, base64 (what LoadTarget.frame takes). */
export function grpcFrame<D extends DescMessage>(schema: D, init: MessageInitShape<D>): string {
  const body = toBinary(schema, create(schema, init));
  const frame = Buffer.alloc(5 + body.length);
  frame.writeUInt32BE(body.length, 1);
  Buffer.from(body).copy(frame, 5);
  return frame.toString("base64");
}

/** An empty message in a gRPC frame (an empty grpc.health.v1.HealthCheckRequest, for instance), base64. */
export const EMPTY_FRAME = Buffer.alloc(5).toString("base64");

/** Runs the load generator as its own process and returns its result. */
export function runLoadProcess(spec: LoadSpec): Promise<LoadResult> {
  return new Promise((resolve, reject) => {
    // A large spec (many request bodies) goes through a file: one argument may hold at most 128 KiB.
    const json = JSON.stringify(spec);
    let specDir: string | undefined;
    let arg = json;
    if (json.length > 64 * 1024) {
      specDir = mkdtempSync(join(tmpdir(), "loadgen-"));
      arg = `@${join(specDir, "spec.json")}`;
      writeFileSync(arg.slice(1), json);
    }
    const child = spawn(process.execPath, ["--import", "tsx", loadgen, arg], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("error", reject);
    child.on("exit", (code) => {
      if (specDir) rmSync(specDir, { recursive: true, force: true });
      const line = out.trim().split("\n").pop();
      if (code !== 0 || !line) return reject(new Error(`load generator exited with ${code}`));
      resolve(JSON.parse(line) as LoadResult);
    });
  });
}
