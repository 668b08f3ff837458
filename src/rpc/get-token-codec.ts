import type { Timestamp } from "@bufbuild/protobuf/wkt";
import type { GetTokenRequest, GetTokenResponse } from "../../gen/tokenservice/v1/token_service_pb.js";

/**
 * GetToken's request and response on the gRPC listener, read and written
 * directly rather than through protobuf-es's reflection: every GetToken
 * decodes a request, and every one answered from the database encodes a
 * response, and reflection cost about 1.3 µs and 5.7 µs of CPU for them (and
 * a dozen short-lived objects, Maps among them). The bytes are the same as
 * `toBinary` writes (fields in number order, proto3 defaults left out), and a
 * request reads as `fromBinary` reads it; test/unit/get-token-codec.test.ts
 * checks both against protobuf-es on random messages and random bytes.
 * Everything else, and the Connect listener, goes through protobuf-es.
 */

const REQUEST_TYPE = "tokenservice.v1.GetTokenRequest";

/** Bytes that are not a GetTokenRequest (truncated, or not protobuf's wire format). */
export class MalformedMessageError extends Error {
  override name = "MalformedMessageError";
}

/** Wire types (protobuf encoding). */
const VARINT = 0;
const FIXED64 = 1;
const LENGTH_DELIMITED = 2;
const START_GROUP = 3;
const END_GROUP = 4;
const FIXED32 = 5;

/** Reads one request; throws MalformedMessageError on bytes protobuf-es would refuse. */
export function decodeGetTokenRequest(bytes: Uint8Array): GetTokenRequest {
  const r = new Reader(bytes);
  const m = {
    $typeName: REQUEST_TYPE,
    userId: "",
    sessionId: "",
    provider: "",
    kind: 0,
    minValidSeconds: 0,
    forceRefresh: false,
    resource: "",
  } as GetTokenRequest;
  while (r.pos < r.end) {
    const tag = r.varint32();
    const field = tag >>> 3;
    const wire = tag & 7;
    if (field === 0) throw new MalformedMessageError("field number 0");
    if (wire === LENGTH_DELIMITED && (field <= 3 || field === 7)) {
      const s = r.string();
      if (field === 1) m.userId = s;
      else if (field === 2) m.sessionId = s;
      else if (field === 3) m.provider = s;
      else m.resource = s;
    } else if (wire === VARINT && field >= 4 && field <= 6) {
      const low = r.varint32();
      if (field === 4) m.kind = low | 0;
      else if (field === 5) m.minValidSeconds = low >>> 0;
      else m.forceRefresh = r.lastVarintNonZero;
    } else {
      // An unknown field, or a known one with another wire type: skipped, as protobuf's own parsers do.
      r.skip(wire, field);
    }
  }
  return m;
}

class Reader {
  pos = 0;
  readonly end: number;
  /** Whether the last varint read was non-zero in its 64 bits (protobuf-es reads a bool so). */
  lastVarintNonZero = false;
  private readonly buf: Buffer;

  constructor(bytes: Uint8Array) {
    this.buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    this.end = this.buf.length;
  }

  /** A varint of up to 10 bytes; returns its low 32 bits (unsigned). */
  varint32(): number {
    let result = 0;
    let nonZero = false;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new MalformedMessageError("premature end of data");
      const b = this.buf[this.pos++]!;
      if (i < 5) result |= (b & 0x7f) << (7 * i);
      if ((i < 9 ? b & 0x7f : b & 0x01) !== 0) nonZero = true;
      if ((b & 0x80) === 0) {
        this.lastVarintNonZero = nonZero;
        return result >>> 0;
      }
    }
    throw new MalformedMessageError("invalid varint");
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new MalformedMessageError("premature end of data");
    this.pos += n;
  }

  string(): string {
    const len = this.varint32();
    const start = this.pos;
    this.advance(len);
    return this.buf.toString("utf8", start, this.pos);
  }

  /** Skips a field's value of wire type `wire` (a group up to its end tag). */
  skip(wire: number, field: number): void {
    switch (wire) {
      case VARINT:
        // As long as it goes on (protobuf-es does not bound a skipped varint), within the bytes.
        for (;;) {
          if (this.pos >= this.end) throw new MalformedMessageError("premature end of data");
          if ((this.buf[this.pos++]! & 0x80) === 0) return;
        }
      case FIXED64:
        this.advance(8);
        return;
      case LENGTH_DELIMITED:
        this.advance(this.varint32());
        return;
      case FIXED32:
        this.advance(4);
        return;
      case START_GROUP:
        for (;;) {
          const tag = this.varint32();
          const inner = tag & 7;
          if (inner === END_GROUP) {
            if (tag >>> 3 !== field) throw new MalformedMessageError("invalid end group tag");
            return;
          }
          if (tag >>> 3 === 0) throw new MalformedMessageError("field number 0");
          this.skip(inner, tag >>> 3);
        }
      default:
        throw new MalformedMessageError(`invalid wire type ${wire}`);
    }
  }
}

/** Bytes of a varint for `n` (0 ≤ n < 2^53). */
function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

function writeVarint(buf: Buffer, pos: number, n: number): number {
  while (n >= 0x80) {
    buf[pos++] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  buf[pos++] = n;
  return pos;
}

/** A signed 64-bit value as protobuf writes it in a varint: negatives as their two's complement, in 10 bytes. */
function int64Bytes(value: bigint): number[] {
  let v = BigInt.asUintN(64, value);
  const out: number[] = [];
  while (v >= 0x80n) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return out;
}

/**
 * The Timestamp's two fields (seconds as int64, nanos as int32), proto3 zeros
 * left out: a varint's number when both are non-negative numbers (any real
 * expiry), else its bytes.
 */
function timestampParts(ts: Timestamp): { seconds: number | number[]; nanos: number | number[]; size: number } {
  const s = typeof ts.seconds === "bigint" && ts.seconds >= 0n && ts.seconds <= 0x1fffffffffffffn ? Number(ts.seconds) : int64Bytes(BigInt(ts.seconds));
  const nanos = ts.nanos >= 0 ? ts.nanos : int64Bytes(BigInt(ts.nanos | 0));
  return { seconds: s, nanos, size: partSize(s) + partSize(nanos) };
}

function partSize(v: number | number[]): number {
  return typeof v === "number" ? (v === 0 ? 0 : 1 + varintSize(v)) : 1 + v.length;
}

function writePart(buf: Buffer, pos: number, tag: number, v: number | number[]): number {
  if (v === 0) return pos;
  buf[pos++] = tag;
  if (typeof v === "number") return writeVarint(buf, pos, v);
  for (const b of v) buf[pos++] = b;
  return pos;
}

/** A string field of `len` bytes (none when empty, as proto3 writes it). */
function fieldSize(len: number): number {
  return len === 0 ? 0 : 1 + varintSize(len) + len;
}

function writeString(buf: Buffer, pos: number, tag: number, value: string, len: number): number {
  if (len === 0) return pos;
  buf[pos++] = tag;
  pos = writeVarint(buf, pos, len);
  return pos + buf.write(value, pos, len, "utf8");
}

/**
 * `toBinary(GetTokenResponseSchema, m)`, byte for byte. A response sent once
 * goes into a slice of Node's shared buffer pool; one that is `kept` (a
 * cached answer's bytes, held as long as its cache entry) gets memory of its
 * own, since a kept slice would keep its whole 8 KiB slab alive (with
 * 10,000 cache entries, tens of MB).
 */
export function encodeGetTokenResponse(m: GetTokenResponse, kept = false): Buffer {
  const token = m.token === "" ? 0 : Buffer.byteLength(m.token, "utf8");
  const tokenType = m.tokenType === "" ? 0 : Buffer.byteLength(m.tokenType, "utf8");
  const scope = m.scope === "" ? 0 : Buffer.byteLength(m.scope, "utf8");
  const sessionId = m.sessionId === "" ? 0 : Buffer.byteLength(m.sessionId, "utf8");
  const ts = m.expiresAt ? timestampParts(m.expiresAt) : undefined;
  const size = fieldSize(token) + fieldSize(tokenType) + (ts ? 1 + varintSize(ts.size) + ts.size : 0) + fieldSize(scope) + fieldSize(sessionId);
  const buf = kept ? Buffer.allocUnsafeSlow(size) : Buffer.allocUnsafe(size);
  let pos = writeString(buf, 0, 0x0a, m.token, token);
  pos = writeString(buf, pos, 0x12, m.tokenType, tokenType);
  if (ts) {
    buf[pos++] = 0x1a;
    pos = writeVarint(buf, pos, ts.size);
    pos = writePart(buf, pos, 0x08, ts.seconds);
    pos = writePart(buf, pos, 0x10, ts.nanos);
  }
  pos = writeString(buf, pos, 0x22, m.scope, scope);
  writeString(buf, pos, 0x2a, m.sessionId, sessionId);
  return buf;
}
