#!/usr/bin/env node
// Example tokenservice.v1 client in plain Node.js: @grpc/grpc-js, with the
// .proto loaded at run time by @grpc/proto-loader (no code generation, no build).
//
// Stores a user's token set, reads a token back by session id and by user and
// provider (and the id_token, when one was given), logs the session out, and
// checks that the session is gone.
//
// Tokens come from the environment, never from argv (argv is visible in ps):
//   ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN (seconds).
//
//   ACCESS_TOKEN=... node client.mjs --target 127.0.0.1:50051 --user alice --provider corp
//
// Exit status: 0 when every step gave the expected answer, 1 otherwise, 2 for bad usage.
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";

const TIMEOUT_MS = 10_000;
const USAGE = `usage: node client.mjs --user ID --provider ID [--target HOST:PORT] [--bearer-env NAME] [--proto-dir DIR]
  tokens from the environment: ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN`;

class StepFailed extends Error {}

/** Length and the first 8 characters: enough to recognise a token, never the token. */
const preview = (secret) => `${secret.length} chars, starts '${secret.slice(0, 8)}'`;
const shortId = (id) => `${id.slice(0, 8)}… (${id.length} chars)`;
/** A google.protobuf.Timestamp as proto-loader renders it (seconds as a string). */
const when = (ts) => (ts && Number(ts.seconds) ? new Date(Number(ts.seconds) * 1000).toISOString().replace(/\.000Z$/, "Z") : "unknown");

function usage(message) {
  console.error(`${message}\n${USAGE}`);
  return 2;
}

async function main() {
  let args;
  try {
    ({ values: args } = parseArgs({
      options: {
        target: { type: "string", default: "127.0.0.1:50051" },
        user: { type: "string" },
        provider: { type: "string" },
        "bearer-env": { type: "string" },
        "proto-dir": { type: "string", default: fileURLToPath(new URL("../../proto", import.meta.url)) },
      },
    }));
  } catch (err) {
    return usage(err.message);
  }
  if (!args.user || !args.provider) return usage("--user and --provider are required");

  const env = process.env;
  const accessToken = env.ACCESS_TOKEN ?? "";
  const refreshToken = env.REFRESH_TOKEN ?? "";
  const idToken = env.ID_TOKEN ?? "";
  if (!accessToken) return usage("ACCESS_TOKEN must be set in the environment");
  if (env.EXPIRES_IN && !/^\d+$/.test(env.EXPIRES_IN)) return usage("EXPIRES_IN must be a whole number of seconds");
  const expiresIn = env.EXPIRES_IN || "0";

  const metadata = new grpc.Metadata();
  if (args["bearer-env"]) {
    const credential = env[args["bearer-env"]];
    if (!credential) return usage(`--bearer-env ${args["bearer-env"]}: that environment variable is empty or unset`);
    metadata.set("authorization", `Bearer ${credential}`);
  }

  const definition = protoLoader.loadSync("tokenservice/v1/token_service.proto", {
    includeDirs: [args["proto-dir"]],
    keepCase: true, // field names as in the .proto: user_id, session_id, ...
    longs: String,
    enums: String,
    defaults: true,
  });
  const { TokenService } = grpc.loadPackageDefinition(definition).tokenservice.v1;
  // Plaintext, as for a service on loopback or behind a mesh that provides
  // TLS. With TLS: grpc.credentials.createSsl(caPem).
  const client = new TokenService(args.target, grpc.credentials.createInsecure());

  /** One unary call with a deadline and the caller credential; resolves with the response. */
  const rpc = (method, request) =>
    new Promise((resolve, reject) => {
      client[method](request, metadata, { deadline: Date.now() + TIMEOUT_MS }, (err, res) => (err ? reject(err) : resolve(res)));
    });
  const call = async (step, method, request) => {
    try {
      return await rpc(method, request);
    } catch (err) {
      throw new StepFailed(`${step} failed: ${grpc.status[err.code] ?? err.code}: ${err.details}`);
    }
  };

  console.log(`target ${args.target}, user '${args.user}', provider '${args.provider}'${args["bearer-env"] ? ", with a caller credential" : ""}`);
  try {
    // 1. StoreSession: what an auth gateway does once, at login.
    const stored = await call("StoreSession", "StoreSession", {
      user_id: args.user,
      provider: args.provider,
      tokens: { access_token: accessToken, refresh_token: refreshToken, id_token: idToken, expires_in: expiresIn },
    });
    const sessionId = stored.session_id;
    if (!sessionId) throw new StepFailed("StoreSession returned no session id");
    console.log(`1. StoreSession: ok, session ${shortId(sessionId)}, access token expires ${when(stored.expires_at)}`);

    // 2. GetToken by session id: what any backend service does per request.
    const got = await call("GetToken (by session id)", "GetToken", { user_id: args.user, session_id: sessionId, min_valid_seconds: 30 });
    if (!got.token) throw new StepFailed("GetToken (by session id) returned no token");
    console.log(
      `2. GetToken (by session id): ok, ${got.token_type} token, ${preview(got.token)}, ` +
        `${got.token === accessToken ? "the stored one" : "refreshed by the service"}, expires ${when(got.expires_at)}` +
        (got.scope ? `, scope '${got.scope}'` : ""),
    );

    // 3. GetToken by user and provider: for a background job without a session id.
    const byUser = await call("GetToken (by user and provider)", "GetToken", { user_id: args.user, provider: args.provider });
    if (byUser.session_id !== sessionId) {
      throw new StepFailed(`GetToken (by user and provider) answered from another session, ${shortId(byUser.session_id)}`);
    }
    console.log(`3. GetToken (by user and provider): ok, session ${shortId(byUser.session_id)}, ${preview(byUser.token)}`);

    // 4. The id_token, when the login produced one.
    if (idToken) {
      const gotId = await call("GetToken (id_token)", "GetToken", { user_id: args.user, session_id: sessionId, kind: "TOKEN_KIND_ID" });
      if (!gotId.token || gotId.token_type !== "N_A") throw new StepFailed(`GetToken (id_token) returned token type '${gotId.token_type}'`);
      console.log(`4. GetToken (id_token): ok, ${preview(gotId.token)}, expires ${when(gotId.expires_at)}`);
    } else {
      console.log("4. GetToken (id_token): skipped, no ID_TOKEN given");
    }

    // 5. RevokeSession: logout, here and at the provider.
    await call("RevokeSession", "RevokeSession", { user_id: args.user, session_id: sessionId });
    console.log("5. RevokeSession: ok");

    // 6. The session is gone: NOT_FOUND.
    let after;
    try {
      await rpc("GetToken", { user_id: args.user, session_id: sessionId });
    } catch (err) {
      after = err;
    }
    if (!after) throw new StepFailed("GetToken after RevokeSession: expected NOT_FOUND, got a token");
    if (after.code !== grpc.status.NOT_FOUND) {
      throw new StepFailed(`GetToken after RevokeSession: expected NOT_FOUND, got ${grpc.status[after.code] ?? after.code}: ${after.details}`);
    }
    console.log(`6. GetToken after RevokeSession: NOT_FOUND, as expected (${after.details})`);
  } catch (err) {
    if (!(err instanceof StepFailed)) throw err;
    console.error(`FAILED: ${err.message}`);
    return 1;
  } finally {
    client.close();
  }
  console.log("all steps passed");
  return 0;
}

process.exitCode = await main();
