import { ConnectError, type Code } from "@connectrpc/connect";
import { expect } from "vitest";
import { ErrorInfoSchema } from "../../gen/google/rpc/error_details_pb.js";

/** How a Connect-ES call failed: code, ErrorInfo reason and metadata, message. Fails the test if the call succeeded. */
export async function failure(p: Promise<unknown>): Promise<{ code: Code; reason?: string; metadata: Record<string, string>; message: string }> {
  const err = await p.then(
    () => undefined,
    (e: unknown) => e,
  );
  expect(err, "expected the call to fail").toBeInstanceOf(ConnectError);
  const e = err as ConnectError;
  const [info] = e.findDetails(ErrorInfoSchema);
  return { code: e.code, reason: info?.reason, metadata: { ...(info?.metadata ?? {}) }, message: e.rawMessage };
}

/** The code a Connect-ES call ended with, or "ok". */
export async function codeOf(p: Promise<unknown>): Promise<Code | "ok"> {
  try {
    await p;
    return "ok";
  } catch (err) {
    return (err as ConnectError).code;
  }
}
