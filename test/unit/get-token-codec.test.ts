import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { BinaryWriter, WireType } from "@bufbuild/protobuf/wire";
import { TimestampSchema, timestampFromDate } from "@bufbuild/protobuf/wkt";
import { describe, expect, it } from "vitest";
import { GetTokenRequestSchema, GetTokenResponseSchema, TokenService, type GetTokenRequest, type TokenKind } from "../../gen/tokenservice/v1/token_service_pb.js";
import { decodeGetTokenRequest, encodeGetTokenResponse, MalformedMessageError } from "../../src/rpc/get-token-codec.js";
import { grpcServiceDefinition } from "../../src/rpc/grpc-service.js";
import { prng } from "../helpers/prng.js";

/** Random strings from pieces that matter to UTF-8 (multi-byte, astral, NUL, lone surrogates, long runs). */
function rng(seed: number) {
  const r = prng(seed);
  const pieces = ["a", "Z", "0", "-", "é", "ß", "€", "日本", "😀", "\u0000", "\ud800", "\udfff", " ", "/", "x".repeat(200)];
  const str = () => (r.int(4) === 0 ? "" : Array.from({ length: 1 + r.int(12) }, () => r.pick(pieces)).join(""));
  return { ...r, str };
}

/** What fromBinary made, without the unknown fields it keeps (the direct decoder drops them). */
function known(m: GetTokenRequest): GetTokenRequest {
  const { $unknown: _unknown, ...rest } = m as GetTokenRequest & { $unknown?: unknown };
  return rest as GetTokenRequest;
}

/** The outcome of decoding with each decoder: the message, or that it threw. */
function both(bytes: Uint8Array): { ours: GetTokenRequest | "threw"; theirs: GetTokenRequest | "threw" } {
  let ours: GetTokenRequest | "threw";
  let theirs: GetTokenRequest | "threw";
  try {
    ours = decodeGetTokenRequest(bytes);
  } catch (err) {
    expect(err instanceof MalformedMessageError || err instanceof RangeError).toBe(true);
    ours = "threw";
  }
  try {
    theirs = known(fromBinary(GetTokenRequestSchema, bytes));
  } catch {
    theirs = "threw";
  }
  return { ours, theirs };
}

/** An unknown field (numbers 8 and up) of a random wire type, groups nested up to `depth`, as protobuf-es writes it. */
function unknownField(r: ReturnType<typeof rng>, depth = 2): number[] {
  const w = new BinaryWriter();
  writeUnknown(w, r, depth);
  return [...w.finish()];
}

function writeUnknown(w: BinaryWriter, r: ReturnType<typeof rng>, depth: number): void {
  const no = 8 + r.int(1000);
  switch (r.int(depth > 0 ? 5 : 4)) {
    case 0:
      w.tag(no, WireType.Varint).uint64(BigInt(r.int(2 ** 31)) * BigInt(1 + r.int(2 ** 20)));
      return;
    case 1:
      w.tag(no, WireType.Bit64).raw(r.bytes(8));
      return;
    case 2:
      w.tag(no, WireType.LengthDelimited).bytes(r.bytes(r.int(40)));
      return;
    case 3:
      w.tag(no, WireType.Bit32).raw(r.bytes(4));
      return;
    default:
      w.tag(no, WireType.StartGroup);
      for (let i = r.int(3); i > 0; i--) writeUnknown(w, r, depth - 1);
      w.tag(no, WireType.EndGroup);
  }
}

function randomRequest(r: ReturnType<typeof rng>): GetTokenRequest {
  const kinds = [0, 1, 2, 3, -1, 2 ** 31 - 1, -(2 ** 31), 99];
  return create(GetTokenRequestSchema, {
    userId: r.str(),
    sessionId: r.str(),
    provider: r.str(),
    kind: r.pick(kinds),
    minValidSeconds: r.pick([0, 1, 60, 2 ** 32 - 1, r.int(2 ** 32)]),
    forceRefresh: r.int(2) === 1,
    resource: r.str(),
  });
}

describe("GetToken's direct codec", () => {
  it("writes every response byte for byte as protobuf-es does", () => {
    const r = rng(1);
    const stamps = () => {
      switch (r.int(6)) {
        case 0:
          return undefined;
        case 1:
          return timestampFromDate(new Date(r.int(2 ** 42)));
        case 2:
          return create(TimestampSchema, { seconds: 0n, nanos: r.int(1e9) });
        case 3:
          return create(TimestampSchema, { seconds: BigInt(-r.int(2 ** 40)), nanos: -r.int(1e9) });
        case 4:
          return create(TimestampSchema, { seconds: 253402300799n, nanos: 999_999_999 });
        default:
          return create(TimestampSchema, {});
      }
    };
    for (let i = 0; i < 3000; i++) {
      const m = create(GetTokenResponseSchema, { token: r.str(), tokenType: r.str(), expiresAt: stamps(), scope: r.str(), sessionId: r.str() });
      const ours = encodeGetTokenResponse(m);
      expect(Buffer.isBuffer(ours)).toBe(true);
      expect(ours.equals(Buffer.from(toBinary(GetTokenResponseSchema, m))), `message ${i}`).toBe(true);
    }
    // The empty message is empty.
    expect(encodeGetTokenResponse(create(GetTokenResponseSchema)).length).toBe(0);
  });

  it("gives a kept response memory of its own, and the gRPC listener keeps a frozen response's bytes so", () => {
    const m = create(GetTokenResponseSchema, { token: "t".repeat(700), tokenType: "Bearer", expiresAt: timestampFromDate(new Date()), sessionId: "s" });
    const owns = (b: Buffer) => b.byteOffset === 0 && b.buffer.byteLength === b.length;
    const kept = encodeGetTokenResponse(m, true);
    expect(owns(kept)).toBe(true);
    expect(kept.equals(encodeGetTokenResponse(m))).toBe(true);
    // A frozen message is one handed out again (a cached answer's response): encoded once, into its own memory.
    const serialize = grpcServiceDefinition(TokenService).getToken!.responseSerialize;
    const frozen = Object.freeze(create(GetTokenResponseSchema, { token: "u".repeat(700), sessionId: "s" }));
    const first = serialize(frozen);
    expect(owns(first)).toBe(true);
    expect(serialize(frozen)).toBe(first);
    expect(first.equals(Buffer.from(toBinary(GetTokenResponseSchema, frozen)))).toBe(true);
  });

  it("reads every request as protobuf-es reads it, with unknown fields anywhere and fields repeated", () => {
    const r = rng(2);
    for (let i = 0; i < 3000; i++) {
      const m = randomRequest(r);
      const plain = toBinary(GetTokenRequestSchema, m);
      expect(decodeGetTokenRequest(plain)).toEqual(known(fromBinary(GetTokenRequestSchema, plain)));
      // And as it was written, a lone surrogate read back as U+FFFD (UTF-8 has no such thing).
      const utf8 = (v: string) => Buffer.from(v, "utf8").toString("utf8");
      expect(decodeGetTokenRequest(plain)).toEqual({ ...known(m), userId: utf8(m.userId), sessionId: utf8(m.sessionId), provider: utf8(m.provider), resource: utf8(m.resource) });
      // Unknown fields before, between and after, and a second message appended (the last value of a field wins).
      const second = toBinary(GetTokenRequestSchema, randomRequest(r));
      const mixed = Uint8Array.from([...unknownField(r), ...plain, ...unknownField(r), ...unknownField(r), ...second, ...unknownField(r)]);
      const { ours, theirs } = both(mixed);
      expect(theirs).not.toBe("threw");
      expect(ours, `message ${i}`).toEqual(theirs);
    }
  });

  it("refuses every truncated request that protobuf-es refuses, and reads the others alike", () => {
    const r = rng(3);
    let refused = 0;
    for (let i = 0; i < 300; i++) {
      const whole = Uint8Array.from([...unknownField(r), ...toBinary(GetTokenRequestSchema, randomRequest(r)), ...unknownField(r)]);
      for (let cut = 0; cut < whole.length; cut++) {
        const { ours, theirs } = both(whole.subarray(0, cut));
        expect(ours, `message ${i} cut at ${cut}`).toEqual(theirs);
        if (ours === "threw") refused++;
      }
    }
    expect(refused).toBeGreaterThan(1000);
  });

  it("refuses bytes that are not protobuf's wire format, as protobuf-es does", () => {
    const cases: Array<[string, number[]]> = [
      ["field number 0", [0x00, 0x01]],
      ["wire type 6", [0x0e, 0x01]],
      ["wire type 7", [0x0f]],
      ["an end group with no start", [0x0c]],
      ["an end group of another field", [0x43, 0x4c]],
      ["a group never ended", [0x43, 0x08, 0x01]],
      ["a varint of 11 bytes as a tag", [...Array(10).fill(0xff), 0x01]],
      ["a varint of 11 bytes as min_valid_seconds", [0x28, ...Array(10).fill(0xff), 0x01]],
      ["a length beyond the message", [0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f]],
      ["a fixed64 cut short", [0x41, 1, 2, 3]],
      ["a fixed32 cut short", [0x45, 1, 2]],
    ];
    for (const [what, bytes] of cases) {
      const { ours, theirs } = both(Uint8Array.from(bytes));
      expect(ours, what).toBe("threw");
      expect(theirs, what).toBe("threw");
    }
  });

  it("skips a known field that arrives with another wire type, and reads a bool from its 64 bits", () => {
    // user_id (1) as a varint, then session_id (2) as it should be: the first is skipped, as protobuf's
    // own parsers treat it (protobuf-es would read the varint's bytes as a length).
    const m = decodeGetTokenRequest(Uint8Array.from([0x08, 0x05, 0x12, 0x02, 0x68, 0x69]));
    expect(m.userId).toBe("");
    expect(m.sessionId).toBe("hi");
    // force_refresh (6) true only from a non-zero value in the low 64 bits.
    const bool = (bytes: number[]) => decodeGetTokenRequest(Uint8Array.from([0x30, ...bytes])).forceRefresh;
    expect(bool([0x00])).toBe(false);
    expect(bool([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01])).toBe(true);
    expect(bool([0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02])).toBe(false);
    for (const bytes of [[0x00], [0x01], [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01], [0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x02]]) {
      expect(bool(bytes)).toBe(fromBinary(GetTokenRequestSchema, Uint8Array.from([0x30, ...bytes])).forceRefresh);
    }
    // kind (4) as int32: a negative value comes in 10 bytes and reads back negative.
    const negative = toBinary(GetTokenRequestSchema, create(GetTokenRequestSchema, { kind: -5 as TokenKind }));
    expect(negative.length).toBe(11);
    expect(decodeGetTokenRequest(negative).kind).toBe(-5);
  });
});
