#!/usr/bin/env bash
# Example tokenservice.v1 client in shell with `buf curl` (from the
# @bufbuild/buf npm package) on the gRPC protocol, the schema read from the
# repository's proto/ directory. Works from any directory: it runs buf from
# the repository root.
#
# Tokens come from the environment, never from argv (argv is visible in ps):
#   ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN (seconds).
# Request bodies (and the credential, as a header) go to buf on stdin.
#
#   ACCESS_TOKEN=... ./buf-curl.sh --target 127.0.0.1:50051 --user alice --provider corp [--bearer-env NAME]
#
# Exit status: 0 when every step gave the expected answer, 1 otherwise, 2 for bad usage.
set -euo pipefail

usage() { echo "$*" >&2; echo "usage: $0 --user ID --provider ID [--target HOST:PORT] [--bearer-env NAME]" >&2; exit 2; }
fail() { echo "FAILED: $*" >&2; exit 1; }

target=127.0.0.1:50051 user="" provider="" bearer_env=""
while [ $# -gt 0 ]; do
  case "$1" in
    --target) target=${2:-}; shift 2 || usage "--target needs a value" ;;
    --user) user=${2:-}; shift 2 || usage "--user needs a value" ;;
    --provider) provider=${2:-}; shift 2 || usage "--provider needs a value" ;;
    --bearer-env) bearer_env=${2:-}; shift 2 || usage "--bearer-env needs a value" ;;
    *) usage "unknown argument: $1" ;;
  esac
done
[ -n "$user" ] && [ -n "$provider" ] || usage "--user and --provider are required"
[ -n "${ACCESS_TOKEN:-}" ] || usage "ACCESS_TOKEN must be set in the environment"
[[ "${EXPIRES_IN:-0}" =~ ^[0-9]+$ ]] || usage "EXPIRES_IN must be a whole number of seconds"
credential=""
if [ -n "$bearer_env" ]; then
  credential=${!bearer_env:-}
  [ -n "$credential" ] || usage "--bearer-env $bearer_env: that environment variable is empty or unset"
fi

cd "$(dirname "$0")/../.."   # the repository root: --schema proto, and npx finds the project's buf
url="http://$target/tokenservice.v1.TokenService"

# A JSON string literal (tokens and ids hold no control characters).
json_str() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
# The value of a string field in a JSON answer (no jq needed; buf prints one field per line).
json_field() { sed -n 's/.*"'"$1"'" *: *"\([^"]*\)".*/\1/p' <<<"$2" | head -n 1; }
# Length and the first 8 characters: enough to recognise a token, never the token.
preview() { printf "%d chars, starts '%s'" "${#1}" "${1:0:8}"; }
short_id() { printf '%s… (%d chars)' "${1:0:8}" "${#1}"; }

# rpc METHOD JSON: sets $rc (buf's exit status: 0, or the gRPC code times 8)
# and $out (the response, or buf's error report).
rpc() {
  rc=0
  if [ -n "$credential" ]; then
    # Headers, a blank line, then the body, all on stdin (printf is a builtin: nothing in argv).
    out=$(printf 'authorization: Bearer %s\n\n%s\n' "$credential" "$2" |
      npx buf curl --protocol grpc --http2-prior-knowledge --schema proto --timeout 30s -H @- -d @- "$url/$1" 2>&1) || rc=$?
  else
    out=$(printf '%s\n' "$2" |
      npx buf curl --protocol grpc --http2-prior-knowledge --schema proto --timeout 30s -d @- "$url/$1" 2>&1) || rc=$?
  fi
}
# expect_ok STEP: fails unless the last call succeeded.
expect_ok() {
  [ "$rc" = 0 ] && return 0
  fail "$1 failed (buf exit $rc): code $(json_field code "$out"): $(json_field message "$out")"
}

echo "target $target, user '$user', provider '$provider'${credential:+, with a caller credential}"
u=$(json_str "$user")

# 1. StoreSession: what an auth gateway does once, at login.
rpc StoreSession "{\"user_id\":$u,\"provider\":$(json_str "$provider"),\"tokens\":{\"access_token\":$(json_str "$ACCESS_TOKEN"),\"refresh_token\":$(json_str "${REFRESH_TOKEN:-}"),\"id_token\":$(json_str "${ID_TOKEN:-}"),\"expires_in\":\"${EXPIRES_IN:-0}\"}}"
expect_ok StoreSession
session_id=$(json_field sessionId "$out")
[ -n "$session_id" ] || fail "StoreSession returned no session id"
echo "1. StoreSession: ok, session $(short_id "$session_id"), access token expires $(json_field expiresAt "$out")"
sid=$(json_str "$session_id")

# 2. GetToken by session id: what any backend service does per request.
rpc GetToken "{\"user_id\":$u,\"session_id\":$sid,\"min_valid_seconds\":30}"
expect_ok "GetToken (by session id)"
token=$(json_field token "$out")
[ -n "$token" ] || fail "GetToken (by session id) returned no token"
[ "$token" = "$ACCESS_TOKEN" ] && which="the stored one" || which="refreshed by the service"
echo "2. GetToken (by session id): ok, $(json_field tokenType "$out") token, $(preview "$token"), $which, expires $(json_field expiresAt "$out")"

# 3. GetToken by user and provider: for a background job without a session id.
rpc GetToken "{\"user_id\":$u,\"provider\":$(json_str "$provider")}"
expect_ok "GetToken (by user and provider)"
got_sid=$(json_field sessionId "$out")
[ "$got_sid" = "$session_id" ] || fail "GetToken (by user and provider) answered from another session, $(short_id "$got_sid")"
echo "3. GetToken (by user and provider): ok, session $(short_id "$got_sid"), $(preview "$(json_field token "$out")")"

# 4. The id_token, when the login produced one.
if [ -n "${ID_TOKEN:-}" ]; then
  rpc GetToken "{\"user_id\":$u,\"session_id\":$sid,\"kind\":\"TOKEN_KIND_ID\"}"
  expect_ok "GetToken (id_token)"
  [ "$(json_field tokenType "$out")" = N_A ] || fail "GetToken (id_token) returned token type '$(json_field tokenType "$out")'"
  echo "4. GetToken (id_token): ok, $(preview "$(json_field token "$out")"), expires $(json_field expiresAt "$out")"
else
  echo "4. GetToken (id_token): skipped, no ID_TOKEN given"
fi

# 5. RevokeSession: logout, here and at the provider.
rpc RevokeSession "{\"user_id\":$u,\"session_id\":$sid}"
expect_ok RevokeSession
echo "5. RevokeSession: ok"

# 6. The session is gone: NOT_FOUND (gRPC code 5), which buf curl reports as exit status 5 << 3 = 40.
rpc GetToken "{\"user_id\":$u,\"session_id\":$sid}"
code=$(json_field code "$out")
[ "$rc" = 40 ] && [ "$code" = not_found ] ||
  fail "GetToken after RevokeSession: expected NOT_FOUND, got buf exit $rc${code:+, code $code}"
echo "6. GetToken after RevokeSession: NOT_FOUND, as expected ($(json_field message "$out"))"

echo "all steps passed"
