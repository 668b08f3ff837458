import { describe, expect, it } from "vitest";
import { clientMetadataDocument, MAX_DOCUMENT_BYTES } from "../../src/authorization/client-metadata.js";
import { applicationType, checkPkce, chooseRegistration, requestedMode } from "../../src/authorization/registration-choice.js";
import { ConfigError } from "../../src/config.js";

const config = { clientName: "token-service", redirectUris: ["https://chat.example.com/cb"], authMethod: "none" as const };

describe("the client metadata document", () => {
  it("has client_id equal to its own URL, and a jwks_uri beside it with private_key_jwt", () => {
    const doc = clientMetadataDocument("https://tokens.example.com/ts", { ...config, authMethod: "private_key_jwt" })!;
    expect(doc.clientId).toBe("https://tokens.example.com/ts/oauth/client-metadata.json");
    expect(doc.path).toBe("/ts/oauth/client-metadata.json");
    expect(JSON.parse(doc.body)).toMatchObject({
      client_id: doc.clientId,
      jwks_uri: "https://tokens.example.com/ts/oauth/jwks.json",
      token_endpoint_auth_method: "private_key_jwt",
    });
  });

  it("is not served without an https public_url or without redirect_uris", () => {
    expect(clientMetadataDocument(undefined, config)).toBeUndefined();
    expect(clientMetadataDocument("http://127.0.0.1:50052", config)).toBeUndefined();
    expect(clientMetadataDocument("https://tokens.example.com", { ...config, redirectUris: [] })).toBeUndefined();
  });

  it("refuses start-up when it would be larger than 5 KiB, naming the setting", () => {
    const many = Array.from({ length: 200 }, (_, i) => `https://chat.example.com/connect/callback/${i}`);
    expect(() => clientMetadataDocument("https://tokens.example.com", { ...config, redirectUris: many })).toThrow(ConfigError);
    expect(() => clientMetadataDocument("https://tokens.example.com", { ...config, redirectUris: many })).toThrow(
      new RegExp(`client_metadata: .* more than the ${MAX_DOCUMENT_BYTES}`),
    );
  });
});

describe("the registration order", () => {
  const doc = clientMetadataDocument("https://tokens.example.com", config);
  const all = { client_id_metadata_document_supported: true, registration_endpoint: "https://as.example.com/reg" };

  it("AUTO: a given client, then CIMD (supported and served), then dynamic registration", () => {
    expect(chooseRegistration("auto", true, all, doc)).toBe("static");
    expect(chooseRegistration("auto", false, all, doc)).toBe("cimd");
    expect(chooseRegistration("auto", false, all, undefined)).toBe("dynamic");
    expect(chooseRegistration("auto", false, { registration_endpoint: "https://as.example.com/reg" }, doc)).toBe("dynamic");
    expect(() => chooseRegistration("auto", false, { client_id_metadata_document_supported: true }, undefined)).toThrow(/public_url/);
  });

  it("the old dynamic_registration flag means DYNAMIC; without a mode, AUTO for a resource_url", () => {
    expect(requestedMode({ registration: "", dynamicRegistration: true, resourceUrl: "" })).toBe("dynamic");
    expect(requestedMode({ registration: "", dynamicRegistration: false, resourceUrl: "https://mcp.example.com" })).toBe("auto");
    expect(requestedMode({ registration: "", dynamicRegistration: false, resourceUrl: "" })).toBe("static");
    expect(() => requestedMode({ registration: "cimd", dynamicRegistration: true, resourceUrl: "" })).toThrow(/dynamic_registration/);
  });

  it("dynamic registration sends application_type: native for loopback redirect URIs only", () => {
    expect(applicationType(["https://chat.example.com/cb"])).toBe("web");
    expect(applicationType(["http://127.0.0.1:3000/cb", "http://localhost:3000/cb"])).toBe("native");
    expect(applicationType(["http://127.0.0.1:3000/cb", "https://chat.example.com/cb"])).toBe("web");
  });

  it("the PKCE guard wants S256, unless assumed", () => {
    expect(checkPkce({ code_challenge_methods_supported: ["plain", "S256"] }, false)).toBe(false);
    expect(() => checkPkce({ code_challenge_methods_supported: ["plain"] }, false)).toThrow(/S256/);
    expect(checkPkce({}, true)).toBe(true);
  });
});
