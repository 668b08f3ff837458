import type { Config } from "../config.js";
import type { Metrics } from "../metrics.js";
import type { RpcChain } from "../rpc/chain.js";
import type { SessionService } from "../sessions/session-service.js";
import type { Spans } from "../tracing/spans.js";
import type { ForwardConfig } from "./config.js";
import { ForwardMetrics } from "./metrics.js";
import { createForwardRoute } from "./route.js";
import { ForwardTokens } from "./tokens.js";
import { Upstreams } from "./upstream.js";

/** The forwarding proxy: its route (given the listeners' chain), its reload and its pools. */
export interface Forwarding {
  /** The `/forward/…` route for the HTTP listener, admitting requests through `chain`. */
  route(chain: RpcChain): ReturnType<typeof createForwardRoute>;
  /** A reload's targets and settings. */
  update(config: ForwardConfig): void;
  close(): Promise<void>;
}

/** Builds the forwarding proxy over the session domain (docs/forwarding.md). */
export function createForwarding(config: Config, deps: { sessions: SessionService; metrics: Metrics; spans: Spans }): Forwarding {
  const upstreams = new Upstreams(config.forward);
  const tokens = new ForwardTokens(deps.sessions);
  const metrics = new ForwardMetrics(deps.metrics.registry);
  return {
    route: (chain) => createForwardRoute({ chain, upstreams, tokens, metrics, spans: deps.spans }),
    update: (next) => upstreams.update(next),
    close: () => upstreams.close(),
  };
}
