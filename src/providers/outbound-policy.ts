import { lookup as dnsLookup, type LookupAddress } from "node:dns";
import { isIP } from "node:net";
import ipaddr from "ipaddr.js";
import { Agent } from "undici";
import type { OutboundSettings } from "../config.js";

export type { OutboundSettings } from "../config.js";

/** Resolves a name to every address it has (dns.lookup with `all`); tests inject their own. */
export type ResolveFn = (hostname: string) => Promise<LookupAddress[]>;

/** Which rule refused a destination: safe to show the caller. */
export type OutboundRule = "private_address" | "insecure_http" | "scheme";

/**
 * The outbound policy refused a destination before any connection was made
 * to it. Carries the URL's host and the rule, never the resolved address.
 */
export class DestinationNotAllowedError extends Error {
  override name = "DestinationNotAllowedError";
  readonly code = "DESTINATION_NOT_ALLOWED";
  constructor(
    readonly host: string,
    readonly rule: OutboundRule,
    /** The address range that refused it (for the log only). */
    readonly range?: string,
  ) {
    super(`destination ${host} is not allowed by the outbound policy (${rule})`);
  }
}

/** The DestinationNotAllowedError somewhere in an error's cause chain, if there is one. */
export function findRefusal(err: unknown): DestinationNotAllowedError | undefined {
  for (let e = err, depth = 0; e && depth < 8; e = (e as { cause?: unknown }).cause, depth++) {
    if (e instanceof DestinationNotAllowedError) return e;
  }
  return undefined;
}

/** Ranges allow_private_networks opens; every other range except plain unicast stays refused. */
const PRIVATE_RANGES = new Set(["private", "loopback", "carrierGradeNat", "uniqueLocal"]);

const defaultResolve: ResolveFn = (hostname) =>
  new Promise((resolve, reject) => dnsLookup(hostname, { all: true }, (err, addresses) => (err ? reject(err) : resolve(addresses))));

/** The URL host without IPv6 brackets. */
function bareHost(hostname: string): string {
  return hostname.startsWith("[") && hostname.endsWith("]") ? hostname.slice(1, -1) : hostname;
}

/** A loopback IP literal or a localhost name (RFC 6761), as the URL spells it. */
function isLoopbackName(url: URL): boolean {
  const host = bareHost(url.hostname).toLowerCase();
  if (host === "localhost" || host.endsWith(".localhost")) return true;
  return isIP(host) !== 0 && ipaddr.process(host).range() === "loopback";
}

function defaultPort(url: URL): string {
  return url.port || (url.protocol === "https:" ? "443" : "80");
}

/**
 * The outbound policy of issue 18 (see docs/security.md): runtime providers
 * and what their metadata names reach only public unicast addresses, unless
 * the operator allowed a host or private networks; the address is checked
 * in the connection's own DNS lookup, so the checked address is the one
 * connected to. `update` applies a reload.
 */
export class OutboundPolicy {
  private current: OutboundSettings;
  private checkedAgent: Agent;
  private openAgent: Agent;

  constructor(
    settings: OutboundSettings,
    private readonly resolve: ResolveFn = defaultResolve,
  ) {
    this.current = settings;
    this.checkedAgent = this.makeAgent(true);
    this.openAgent = this.makeAgent(false);
  }

  get settings(): OutboundSettings {
    return this.current;
  }

  /** Applies new settings; connections opened under the old ones are closed once idle. */
  update(settings: OutboundSettings): void {
    const old = [this.checkedAgent, this.openAgent];
    this.current = settings;
    this.checkedAgent = this.makeAgent(true);
    this.openAgent = this.makeAgent(false);
    for (const agent of old) void agent.close().catch(() => undefined);
  }

  /** Whether allow_hosts names this URL's host (with or without its port). */
  hostAllowed(url: URL): boolean {
    const host = url.hostname.toLowerCase();
    return this.current.allowHosts.includes(host) || this.current.allowHosts.includes(`${host}:${defaultPort(url)}`);
  }

  /** The range name of an address that the policy refuses, or undefined when it is allowed. */
  refusedRange(address: string): string | undefined {
    if (!ipaddr.isValid(address)) return "invalid";
    const parsed = ipaddr.process(address);
    const range = parsed.range();
    // IPv4-compatible IPv6 (::a.b.c.d, deprecated by RFC 4291): ipaddr.js calls it unicast, but a tunnel may carry it to the IPv4 address.
    if (range === "unicast" && parsed.kind() === "ipv6" && parsed.toNormalizedString().startsWith("0:0:0:0:0:0:")) return "ipv4Compatible";
    if (range === "unicast") return undefined;
    if (this.current.allowPrivateNetworks && PRIVATE_RANGES.has(range)) return undefined;
    return range;
  }

  /**
   * Checks what can be checked before connecting: the scheme, and an address
   * written in the URL (which no lookup sees). Returns the agent to connect
   * with: one whose lookup checks every resolved address, or, for an allowed
   * host or an exempt (YAML) provider, one that does not.
   */
  dispatcherFor(url: URL, exempt: boolean, insecureAllowed: boolean): Agent {
    if (url.protocol !== "https:" && url.protocol !== "http:") throw new DestinationNotAllowedError(url.hostname, "scheme");
    if (exempt) return this.openAgent;
    // Plain http only where the operator allowed it, and only to a loopback host or one named in allow_hosts, also
    // when a runtime provider's metadata names the URL.
    if (url.protocol === "http:" && !(insecureAllowed && this.current.allowInsecureHttp && (this.hostAllowed(url) || isLoopbackName(url)))) {
      throw new DestinationNotAllowedError(url.hostname, "insecure_http");
    }
    if (this.hostAllowed(url)) return this.openAgent;
    const host = bareHost(url.hostname);
    if (isIP(host)) {
      const range = this.refusedRange(host);
      if (range) throw new DestinationNotAllowedError(url.hostname, "private_address", range);
    }
    return this.checkedAgent;
  }

  /**
   * The address rules for a URL a caller names, checked before anything else
   * about it (its scheme included), so that a refused destination is answered
   * as one whatever the request says. A name is resolved for this answer only;
   * the connection checks and pins its own lookup. A name that does not
   * resolve passes here and fails when it is fetched.
   */
  async precheck(url: URL): Promise<void> {
    if (this.hostAllowed(url)) return;
    const host = bareHost(url.hostname);
    const addresses = isIP(host) ? [host] : (await this.resolve(host).catch(() => [])).map((a) => a.address);
    for (const address of addresses) {
      const range = this.refusedRange(address);
      if (range) throw new DestinationNotAllowedError(url.hostname, "private_address", range);
    }
  }

  /** Closes the connection pools. */
  async close(): Promise<void> {
    await Promise.all([this.checkedAgent.close(), this.openAgent.close()]).catch(() => undefined);
  }

  private makeAgent(check: boolean): Agent {
    const lookup = (
      hostname: string,
      options: { all?: boolean },
      callback: (err: Error | null, address: string | LookupAddress[], family?: number) => void,
    ) => {
      this.resolve(hostname).then(
        (addresses) => {
          for (const a of check ? addresses : []) {
            const range = this.refusedRange(a.address);
            if (range) return callback(new DestinationNotAllowedError(hostname, "private_address", range), []);
          }
          if (addresses.length === 0) return callback(Object.assign(new Error(`no address for ${hostname}`), { code: "ENOTFOUND" }), []);
          if (options.all) return callback(null, addresses);
          callback(null, addresses[0]!.address, addresses[0]!.family);
        },
        (err: Error) => callback(err, []),
      );
    };
    return new Agent({ connect: { lookup } as never });
  }
}
