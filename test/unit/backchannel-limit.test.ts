import { describe, expect, it } from "vitest";
import { createBackchannelLimiter } from "../../src/rpc/backchannel-limit.js";

describe("the back-channel route's rate limit", () => {
  const limits = { perAddress: { perSecond: 1, burst: 3 }, perProvider: { perSecond: 1, burst: 5 }, maxKeys: 4 };

  it("takes from the client address's bucket and the provider's, and refills with time", () => {
    let t = 0;
    const allow = createBackchannelLimiter(limits, () => t);
    expect([1, 2, 3, 4].map(() => allow("10.0.0.1", "corp"))).toEqual([true, true, true, false]);
    // A request refused by its address took nothing from the provider. Another address has its own burst, until the provider's (5) runs dry.
    expect([1, 2, 3].map(() => allow("10.0.0.2", "corp"))).toEqual([true, true, false]);
    expect(allow("10.0.0.3", "other")).toBe(true);
    t += 2000;
    expect(allow("10.0.0.1", "corp")).toBe(true);
  });

  it("keeps at most maxKeys buckets of each kind, dropping the oldest: newer buckets keep what they took", () => {
    const allow = createBackchannelLimiter(limits, () => 0);
    for (let i = 0; i < 100; i++) expect(allow(`10.0.1.${i}`, `p${i}`)).toBe(true);
    // 10.0.1.99 has 2 of its 3 left; three new addresses fill the map (4) without pushing it out.
    expect([1, 2].map(() => allow("10.0.1.99", "q"))).toEqual([true, true]);
    for (const a of ["10.0.2.1", "10.0.2.2", "10.0.2.3"]) expect(allow(a, "q2")).toBe(true);
    expect(allow("10.0.1.99", "q3")).toBe(false);
  });
});
