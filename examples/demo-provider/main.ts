/**
 * A demo OpenID Connect provider (oidc-provider, refresh-token rotation on)
 * for trying the token service without a real identity provider, as
 * docker-compose.yml does. Not for production: users are not authenticated.
 *
 *   PORT=9443 PUBLIC_HOST=demo-provider TLS_CERT_FILE=… TLS_KEY_FILE=… \
 *   CLIENT_ID=token-service CLIENT_SECRET=… npx tsx examples/demo-provider/main.ts
 *
 * `POST http://HOST:LOGIN_PORT/login?user=alice` (default port 9444) "logs a
 * user in" and answers a real token set from the provider's token endpoint:
 * what an auth gateway would hand to StoreSession.
 */
import { readFileSync } from "node:fs";
import http from "node:http";
import { startTestProvider } from "../../test/helpers/oidc-provider.js";

const env = process.env;
const tls =
  env.TLS_CERT_FILE && env.TLS_KEY_FILE
    ? { cert: readFileSync(env.TLS_CERT_FILE), key: readFileSync(env.TLS_KEY_FILE) }
    : undefined;
if (!env.CLIENT_SECRET) {
  console.error("CLIENT_SECRET is required");
  process.exit(2);
}
const provider = await startTestProvider({
  host: env.HOST ?? "0.0.0.0",
  port: Number(env.PORT ?? 9443),
  publicHost: env.PUBLIC_HOST ?? "localhost",
  tls,
  clientId: env.CLIENT_ID ?? "token-service",
  clientSecret: env.CLIENT_SECRET,
  accessTokenTtl: Number(env.ACCESS_TOKEN_TTL ?? 300),
});

const login = http.createServer((req, res) => {
  const url = new URL(req.url ?? "/", "http://localhost");
  const user = url.searchParams.get("user");
  if (req.method !== "POST" || url.pathname !== "/login" || !user) {
    res.writeHead(400, { "content-type": "text/plain" }).end("POST /login?user=NAME\n");
    return;
  }
  provider.login(user).then(
    (tokens) => res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify(tokens)),
    () => res.writeHead(500, { "content-type": "text/plain" }).end("login failed\n"),
  );
});
login.listen(Number(env.LOGIN_PORT ?? 9444), env.HOST ?? "0.0.0.0");
console.log(`demo provider: issuer ${provider.issuer}, client ${provider.clientId}; logins at :${env.LOGIN_PORT ?? 9444}/login?user=NAME`);

for (const signal of ["SIGINT", "SIGTERM"] as const) {
  process.on(signal, () => {
    login.close();
    void provider.close().then(() => process.exit(0));
  });
}
