/**
 * The forwarding part of `npm run demo` (docs/forwarding.md): an
 * OpenAI-compatible model server stand-in, two forward targets in the YAML
 * file (one with a fallback key), and a streamed chat completion through
 * `/forward/models/…`, first with the user's own token, then with the
 * fallback key for a user without a session.
 */
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { sseEvents, startOpenAiStandIn } from "../test/helpers/openai-stand-in.js";
import type { TestProvider } from "../test/helpers/oidc-provider.js";
import type { connectGrpcClient } from "../test/helpers/clients.js";

/** What the demo prints with, and how it checks. */
interface DemoIo {
  say(title: string): void;
  info(line: string): void;
  check(ok: boolean, what: string): void;
  peek(token: string): string;
}

const FALLBACK_KEY = "sk-demo-fallback-key";

/** Starts the model server stand-in and writes the fallback key file; `yaml` goes into the service's configuration. */
export async function prepareForwardingDemo(dir: string, provider: string) {
  const model = await startOpenAiStandIn();
  const keyFile = join(dir, "llm-key");
  writeFileSync(keyFile, `${FALLBACK_KEY}\n`);
  const yaml = {
    forward: [
      { id: "models", url: `${model.url}/v1`, provider, fallback_key_file: keyFile, allow_insecure_http: true },
      { id: "models-strict", url: `${model.url}/v1`, provider, allow_insecure_http: true },
    ],
  };

  /** One streamed chat completion through the proxy for `user`: the text as it arrived, event by event. */
  async function chat(httpUrl: string, target: string, user: string, io: DemoIo): Promise<Response | string> {
    const res = await fetch(`${httpUrl}/forward/${target}/chat/completions`, {
      method: "POST",
      headers: { "content-type": "application/json", "x-token-service-user": user },
      body: JSON.stringify({ model: "demo", stream: true, messages: [{ role: "user", content: "Say hello" }] }),
    });
    if (res.status !== 200) return res;
    const started = performance.now();
    let text = "";
    for await (const data of sseEvents(res.body!)) {
      if (data === "[DONE]") break;
      const piece = (JSON.parse(data) as { choices: Array<{ delta: { content: string } }> }).choices[0]!.delta.content;
      text += piece;
      io.info(`  event at +${Math.round(performance.now() - started)} ms: ${JSON.stringify(piece)}`);
    }
    return text;
  }

  return {
    yaml,
    async run(o: { httpUrl: string; client: ReturnType<typeof connectGrpcClient>; provider: TestProvider }, io: DemoIo): Promise<void> {
      io.say("Mia's chat completion streams through the forwarding proxy: her token never leaves the service");
      const mia = await o.provider.login("mia");
      await o.client.storeSession({ userId: "mia", provider, tokens: { accessToken: mia.access_token, refreshToken: mia.refresh_token, expiresIn: BigInt(mia.expires_in) } });
      // The model server takes Mia's token (the provider says it is active) or the fallback key.
      model.accept = async (token) => token === FALLBACK_KEY || (await o.provider.introspect(token)).active;
      // Each event leaves the model server a little after the one before: the proxy passes each on as it comes.
      model.gate = () => new Promise((resolve) => setTimeout(resolve, 150));
      io.info(`POST ${o.httpUrl}/forward/models/chat/completions, x-token-service-user: mia, "stream": true, no token from the caller`);
      const text = await chat(o.httpUrl, "models", "mia", io);
      io.check(text === "Hello, world", "the completion should stream through");
      const sent = model.requests.at(-1)!.headers.authorization;
      io.check(sent === `Bearer ${mia.access_token}`, "the model server should get Mia's token");
      io.info(`the model server got Authorization: Bearer ${io.peek(mia.access_token)}, Mia's access token, from the service`);

      io.say("Noah has no session: the same request goes with the operator's fallback key");
      const fallback = await chat(o.httpUrl, "models", "noah", io);
      io.check(fallback === "Hello, world" && model.requests.at(-1)!.headers.authorization === `Bearer ${FALLBACK_KEY}`, "the fallback key should go");
      io.info(`the model server got the static key from forward[].fallback_key_file (${io.peek(FALLBACK_KEY)})`);
      const strict = await chat(o.httpUrl, "models-strict", "noah", io);
      io.check(strict instanceof Response && strict.status === 401, "a target without a fallback key should answer 401");
      const body = (await (strict as Response).json()) as { reason: string; start_authorization: { rpc: string } };
      io.info(`a target without a fallback key → HTTP 401, reason ${body.reason}, and how to start an authorization (${body.start_authorization.rpc})`);
    },
    close: () => model.close(),
  };
}
