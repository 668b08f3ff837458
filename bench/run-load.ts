import { spawn } from "node:child_process";
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
    const child = spawn(process.execPath, ["--import", "tsx", loadgen, JSON.stringify(spec)], {
      stdio: ["ignore", "pipe", "inherit"],
    });
    let out = "";
    child.stdout.setEncoding("utf8").on("data", (d: string) => (out += d));
    child.on("error", reject);
    child.on("exit", (code) => {
      const line = out.trim().split("\n").pop();
      if (code !== 0 || !line) return reject(new Error(`load generator exited with ${code}`));
      resolve(JSON.parse(line) as LoadResult);
    });
  });
}
