import { afterEach, describe, expect, it } from "vitest";
import { DestinationNotAllowedError, findRefusal, OutboundPolicy, type OutboundSettings } from "../../src/providers/outbound-policy.js";

const BASE: OutboundSettings = { allowHosts: [], allowPrivateNetworks: false, allowInsecureHttp: false, maxResponseBytes: 1024 * 1024 };

describe("the outbound policy's rules", () => {
  const policies: OutboundPolicy[] = [];
  const make = (settings: Partial<OutboundSettings> = {}) => {
    const p = new OutboundPolicy({ ...BASE, ...settings }, () => Promise.resolve([]));
    policies.push(p);
    return p;
  };
  afterEach(async () => {
    for (const p of policies.splice(0)) await p.close();
  });
  const refusal = (fn: () => unknown) => {
    try {
      fn();
    } catch (err) {
      return findRefusal(err);
    }
    return undefined;
  };

  it.each([
    ["127.0.0.1", "loopback"],
    ["10.0.0.1", "private"],
    ["172.16.5.4", "private"],
    ["192.168.1.1", "private"],
    ["169.254.169.254", "linkLocal"],
    ["100.64.0.1", "carrierGradeNat"],
    ["0.0.0.0", "unspecified"],
    ["192.0.2.1", "reserved"],
    ["::1", "loopback"],
    ["fd00::1", "uniqueLocal"],
    ["fe80::1", "linkLocal"],
    ["::ffff:127.0.0.1", "loopback"],
    ["::ffff:169.254.169.254", "linkLocal"],
    ["64:ff9b::a00:1", "rfc6052"],
    ["::7f00:1", "ipv4Compatible"],
    ["::808:808", "ipv4Compatible"],
  ])("refuses %s (%s) by default", (address, range) => {
    expect(make().refusedRange(address)).toBe(range);
  });

  it("allows public unicast addresses", () => {
    const p = make();
    for (const a of ["93.184.215.14", "8.8.8.8", "2606:4700:4700::1111"]) expect(p.refusedRange(a), a).toBeUndefined();
  });

  it("allow_private_networks opens private, loopback, CGNAT and unique-local, never link-local or the other special ranges", () => {
    const p = make({ allowPrivateNetworks: true });
    for (const a of ["10.0.0.1", "127.0.0.1", "100.64.0.1", "fd00::1", "::1"]) expect(p.refusedRange(a), a).toBeUndefined();
    for (const a of ["169.254.169.254", "fe80::1", "0.0.0.0", "224.0.0.1"]) expect(p.refusedRange(a), a).toBeDefined();
  });

  it("checks a literal address in the URL in every spelling, and the scheme", () => {
    const p = make();
    for (const u of ["https://127.1/", "https://2130706433/", "https://0x7f000001/", "https://[::ffff:127.0.0.1]/", "https://0177.0.0.1/"]) {
      expect(refusal(() => p.dispatcherFor(new URL(u), false, false)), u).toMatchObject({ rule: "private_address" });
    }
    expect(refusal(() => p.dispatcherFor(new URL("http://93.184.215.14/"), false, true))).toMatchObject({ rule: "insecure_http" });
    expect(refusal(() => p.dispatcherFor(new URL("ftp://93.184.215.14/"), true, true))).toMatchObject({ rule: "scheme" });
    expect(refusal(() => p.dispatcherFor(new URL("https://93.184.215.14/"), false, false))).toBeUndefined();
    // YAML providers are exempt from the address rules.
    expect(refusal(() => p.dispatcherFor(new URL("http://127.0.0.1:8080/"), true, false))).toBeUndefined();
  });

  it("allow_hosts names a host for any port, or a host and one port; plain http still needs both settings", () => {
    const p = make({ allowHosts: ["idp.internal", "127.0.0.1:8443"] });
    expect(p.hostAllowed(new URL("https://idp.internal:9000/"))).toBe(true);
    expect(p.hostAllowed(new URL("https://127.0.0.1:8443/"))).toBe(true);
    expect(p.hostAllowed(new URL("https://127.0.0.1:8444/"))).toBe(false);
    expect(p.hostAllowed(new URL("https://127.0.0.1/"))).toBe(false);
    expect(refusal(() => p.dispatcherFor(new URL("https://127.0.0.1:8443/"), false, false))).toBeUndefined();
    expect(refusal(() => p.dispatcherFor(new URL("http://127.0.0.1:8443/"), false, true))).toMatchObject({ rule: "insecure_http" });
    p.update({ ...BASE, allowHosts: ["127.0.0.1:8443"], allowInsecureHttp: true });
    expect(refusal(() => p.dispatcherFor(new URL("http://127.0.0.1:8443/"), false, true))).toBeUndefined();
    expect(refusal(() => p.dispatcherFor(new URL("http://127.0.0.1:8443/"), false, false))).toMatchObject({ rule: "insecure_http" });
  });

  it("allows plain http, even with both settings, only to a loopback host or one in allow_hosts", () => {
    const p = make({ allowPrivateNetworks: true, allowInsecureHttp: true, allowHosts: ["idp.internal"] });
    for (const u of ["http://localhost:8080/", "http://127.0.0.1:8080/", "http://[::1]:8080/", "http://idp.internal/"]) {
      expect(refusal(() => p.dispatcherFor(new URL(u), false, true)), u).toBeUndefined();
    }
    // A runtime provider's metadata naming a plain-http endpoint elsewhere: secrets would travel in clear.
    for (const u of ["http://93.184.215.14/token", "http://idp.example.com/token", "http://10.0.0.5/jwks"]) {
      expect(refusal(() => p.dispatcherFor(new URL(u), false, true)), u).toMatchObject({ rule: "insecure_http" });
    }
  });

  it("prechecks a URL the caller names: literal addresses and names that resolve to refused addresses", async () => {
    const p = new OutboundPolicy(BASE, (host) => Promise.resolve(host === "inside.example" ? [{ address: "10.1.1.1", family: 4 }] : []));
    policies.push(p);
    await expect(p.precheck(new URL("http://127.0.0.1:8080/"))).rejects.toMatchObject({ rule: "private_address", host: "127.0.0.1" });
    await expect(p.precheck(new URL("https://inside.example/"))).rejects.toMatchObject({ rule: "private_address", host: "inside.example" });
    await expect(p.precheck(new URL("https://unresolvable.example/"))).resolves.toBeUndefined();
    await expect(p.precheck(new URL("https://93.184.215.14/"))).resolves.toBeUndefined();
  });

  it("finds a refusal anywhere in a cause chain, and its message names the host and rule only", () => {
    const e = new DestinationNotAllowedError("localhost", "private_address", "loopback");
    expect(findRefusal(new TypeError("fetch failed", { cause: new Error("x", { cause: e }) }))).toBe(e);
    expect(findRefusal(new Error("other"))).toBeUndefined();
    expect(e.message).toBe("destination localhost is not allowed by the outbound policy (private_address)");
  });
});
