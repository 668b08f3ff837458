import { create, fromBinary, toBinary } from "@bufbuild/protobuf";
import { getTextEncoding } from "@bufbuild/protobuf/wire";
import { describe, expect, it } from "vitest";
import { GetTokenResponseSchema } from "../../gen/tokenservice/v1/token_service_pb.js";
import { encodeUtf8, useNodeUtf8Encoder } from "../../src/rpc/utf8.js";

describe("protobuf-es strings encoded with Node's Buffer", () => {
  const samples = ["", "plain ASCII token", "é ü ß", "日本語のトークン", "emoji 🔑🪙", "lone \ud800 surrogate", "\udfff end", "a".repeat(70_000)];

  it("writes exactly the bytes TextEncoder writes, lone surrogates included", () => {
    const te = new TextEncoder();
    for (const s of samples) expect(Buffer.from(encodeUtf8(s)).equals(Buffer.from(te.encode(s)))).toBe(true);
  });

  it("is installed once, and messages round-trip through it", () => {
    useNodeUtf8Encoder();
    useNodeUtf8Encoder();
    expect(getTextEncoding().encodeUtf8).toBe(encodeUtf8);
    for (const s of samples) {
      const bytes = toBinary(GetTokenResponseSchema, create(GetTokenResponseSchema, { token: s, scope: s }));
      const back = fromBinary(GetTokenResponseSchema, bytes);
      expect(back.token).toBe(new TextDecoder().decode(new TextEncoder().encode(s)));
    }
  });
});
