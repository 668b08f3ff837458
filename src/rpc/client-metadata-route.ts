import type http from "node:http";
import type http2 from "node:http2";
import type { ClientMetadataDocument, ServedBody } from "../authorization/client-metadata.js";

type Request = http.IncomingMessage | http2.Http2ServerRequest;
type Response = http.ServerResponse | http2.Http2ServerResponse;

/** How long authorization servers may cache the document (it changes only with a restart). */
const DOCUMENT_MAX_AGE_S = 3600;
/** The JWK set changes with `keys rotate`, and both keys stay published through a rotation: a short cache is enough. */
const JWKS_MAX_AGE_S = 300;

function send(req: Request, res: Response, item: ServedBody, maxAge: number): void {
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { allow: "GET, HEAD", "content-length": 0 });
    res.end();
    return;
  }
  const headers = { "cache-control": `public, max-age=${maxAge}`, etag: item.etag };
  const match = String(req.headers["if-none-match"] ?? "");
  if (match.split(",").some((t) => t.trim() === item.etag || t.trim() === "*")) {
    res.writeHead(304, headers);
    res.end();
    return;
  }
  res.writeHead(200, { ...headers, "content-type": "application/json", "content-length": Buffer.byteLength(item.body) });
  res.end(req.method === "HEAD" ? "" : item.body);
}

/**
 * `GET {public_url}/oauth/client-metadata.json` (the service's client ID
 * metadata document) and, with private_key_jwt, `GET {public_url}/oauth/jwks.json`
 * on the HTTP listener: unauthenticated, and bounded work per request (bodies
 * made at start-up or on a key reload, never read from the database or
 * fetched per request), with Cache-Control and an ETag. Returns false for
 * any other path.
 */
export function createClientMetadataRoute(document: ClientMetadataDocument | undefined, jwks: () => ServedBody | undefined): (req: Request, res: Response) => boolean {
  return (req, res) => {
    if (!document) return false;
    const path = (req.url ?? "").split("?")[0]!;
    if (path === document.path) {
      send(req, res, document, DOCUMENT_MAX_AGE_S);
      return true;
    }
    const keys = path === document.jwksPath ? jwks() : undefined;
    if (!keys) return false;
    send(req, res, keys, JWKS_MAX_AGE_S);
    return true;
  };
}
