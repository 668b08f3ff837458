import { ConfigError } from "../config.js";

/** The value after `--name`, if the flag is present; a flag without a value is a usage error. */
export function option(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  if (i === -1) return undefined;
  const value = args[i + 1];
  if (value === undefined || value.startsWith("--")) throw new ConfigError(`${name} needs a value`);
  return value;
}
