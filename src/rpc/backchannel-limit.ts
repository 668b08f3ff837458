import { TokenBucket } from "./rate-limit.js";

/** A token bucket's shape: sustained requests per second, and the burst held. */
export interface BucketShape {
  perSecond: number;
  burst: number;
}

/** How much the unauthenticated back-channel route takes, per client address and per provider, per replica. */
export interface BackchannelLimits {
  perAddress: BucketShape;
  perProvider: BucketShape;
  /** Buckets kept per kind; past this the oldest is dropped (an attacker naming endless keys cannot grow memory). */
  maxKeys: number;
}

export const BACKCHANNEL_LIMITS: BackchannelLimits = {
  perAddress: { perSecond: 10, burst: 30 },
  perProvider: { perSecond: 20, burst: 60 },
  maxKeys: 10_000,
};

/**
 * Token buckets for the back-channel logout route: a request is let through
 * when both its client address's bucket and its provider's bucket have a
 * token left.
 */
export function createBackchannelLimiter(limits: BackchannelLimits = BACKCHANNEL_LIMITS, now?: () => number): (address: string, provider: string) => boolean {
  const byAddress = new Map<string, TokenBucket>();
  const byProvider = new Map<string, TokenBucket>();
  const bucket = (map: Map<string, TokenBucket>, key: string, shape: BucketShape) => {
    let b = map.get(key);
    if (!b) {
      if (map.size >= limits.maxKeys) map.delete(map.keys().next().value!);
      b = new TokenBucket(shape.perSecond, shape.burst, now);
      map.set(key, b);
    }
    return b;
  };
  return (address, provider) => bucket(byAddress, address, limits.perAddress).take() && bucket(byProvider, provider, limits.perProvider).take();
}
