/**
 * What is wrong with an RFC 8707 resource indicator (an absolute URI without
 * a fragment, a query or credentials), or undefined when nothing is. The one
 * rule for GetToken, StoreSession, StartAuthorization and callers' `resources`.
 */
export function resourceProblem(value: string): string | undefined {
  if (value.length > 2048) return "must be at most 2048 characters";
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return "must be an absolute URI";
  }
  if (url.hash !== "" || value.includes("#")) return "must not have a fragment";
  // It is logged, audited and a metric label: no place for credentials. RFC 8707 says a resource SHOULD NOT have a query.
  if (url.username !== "" || url.password !== "") return "must not hold credentials";
  if (url.search !== "" || value.includes("?")) return "must not have a query (RFC 8707, section 2)";
  return undefined;
}
