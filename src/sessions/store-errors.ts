import { DatabaseUnavailableError } from "../db/session-repository.js";
import { StoreUnavailableError } from "./errors.js";

/**
 * Turns the database layer's outage error into the domain's own, so that
 * layers above the domain never need to know the database layer. Every other
 * error passes through unchanged.
 */
export function asDomainError(err: unknown): never {
  if (err instanceof DatabaseUnavailableError) throw new StoreUnavailableError({ cause: err });
  throw err;
}
