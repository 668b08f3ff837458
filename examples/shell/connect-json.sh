#!/usr/bin/env bash
# Example tokenservice.v1 client in plain shell: curl speaking the Connect
# protocol's JSON form (POST /tokenservice.v1.TokenService/<Method>).
#
# Tokens come from the environment, never from argv (argv is visible in ps):
#   ACCESS_TOKEN (required), REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN (seconds).
# Request bodies go to curl on stdin and the credential through a file
# descriptor, so neither appears on a command line.
#
#   ACCESS_TOKEN=... ./connect-json.sh --target 127.0.0.1:50052 --user alice --provider corp [--bearer-env NAME]
#
# --target is the HTTP listener (TOKEN_SERVICE_HTTP_ADDR), which speaks plain
# HTTP/1.1 in clear text: no curl flags beyond the body are needed.
#
# Exit status: 0 when every step gave the expected answer, 1 otherwise, 2 for bad usage.
set -euo pipefail

usage() { echo "$*" >&2; echo "usage: $0 --user ID --provider ID [--target HOST:PORT] [--bearer-env NAME]" >&2; exit 2; }
fail() { echo "FAILED: $*" >&2; exit 1; }

target=127.0.0.1:50052 user="" provider="" bearer_env=""
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

base="http://$target/tokenservice.v1.TokenService"

# A JSON string literal (tokens and ids hold no control characters).
json_str() { local s=$1; s=${s//\\/\\\\}; s=${s//\"/\\\"}; printf '"%s"' "$s"; }
# The value of a string field in a JSON response (no jq needed).
json_field() { sed -n 's/.*"'"$1"'" *: *"\([^"]*\)".*/\1/p' <<<"$2" | head -n 1; }
# Length and the first 8 characters: enough to recognise a token, never the token.
preview() { printf "%d chars, starts '%s'" "${#1}" "${1:0:8}"; }
short_id() { printf '%s… (%d chars)' "${1:0:8}" "${#1}"; }

headers() {
  printf 'content-type: application/json\nconnect-protocol-version: 1\n'
  [ -z "$credential" ] || printf 'authorization: Bearer %s\n' "$credential"
}
# rpc METHOD JSON: sets $status (HTTP status) and $body (the response).
rpc() {
  local out
  # Headers come from a file descriptor: printf is a shell builtin, so the
  # credential reaches curl through a pipe and never shows in argv.
  out=$(curl -sS --max-time 10 -X POST \
    -H @<(headers) \
    --data-binary @- -w '\n%{http_code}' "$base/$1" <<<"$2") || fail "$1: curl could not reach $target"
  status=${out##*$'\n'}
  body=${out%$'\n'*}
}
# expect_ok STEP: fails unless the last call answered 200.
expect_ok() {
  [ "$status" = 200 ] && return 0
  fail "$1 failed: HTTP $status, code $(json_field code "$body"): $(json_field message "$body")"
}

echo "target $target, user '$user', provider '$provider'${credential:+, with a caller credential}"
u=$(json_str "$user")

# 1. StoreSession: what an auth gateway does once, at login.
rpc StoreSession "{\"userId\":$u,\"provider\":$(json_str "$provider"),\"tokens\":{\"accessToken\":$(json_str "$ACCESS_TOKEN"),\"refreshToken\":$(json_str "${REFRESH_TOKEN:-}"),\"idToken\":$(json_str "${ID_TOKEN:-}"),\"expiresIn\":\"${EXPIRES_IN:-0}\"}}"
expect_ok StoreSession
session_id=$(json_field sessionId "$body")
[ -n "$session_id" ] || fail "StoreSession returned no session id"
echo "1. StoreSession: ok, session $(short_id "$session_id"), access token expires $(json_field expiresAt "$body")"
sid=$(json_str "$session_id")

# 2. GetToken by session id: what any backend service does per request.
rpc GetToken "{\"userId\":$u,\"sessionId\":$sid,\"minValidSeconds\":30}"
expect_ok "GetToken (by session id)"
token=$(json_field token "$body")
[ -n "$token" ] || fail "GetToken (by session id) returned no token"
[ "$token" = "$ACCESS_TOKEN" ] && which="the stored one" || which="refreshed by the service"
echo "2. GetToken (by session id): ok, $(json_field tokenType "$body") token, $(preview "$token"), $which, expires $(json_field expiresAt "$body")"

# 3. GetToken by user and provider: for a background job without a session id.
rpc GetToken "{\"userId\":$u,\"provider\":$(json_str "$provider")}"
expect_ok "GetToken (by user and provider)"
got_sid=$(json_field sessionId "$body")
[ "$got_sid" = "$session_id" ] || fail "GetToken (by user and provider) answered from another session, $(short_id "$got_sid")"
echo "3. GetToken (by user and provider): ok, session $(short_id "$got_sid"), $(preview "$(json_field token "$body")")"

# 4. The id_token, when the login produced one.
if [ -n "${ID_TOKEN:-}" ]; then
  rpc GetToken "{\"userId\":$u,\"sessionId\":$sid,\"kind\":\"TOKEN_KIND_ID\"}"
  expect_ok "GetToken (id_token)"
  [ "$(json_field tokenType "$body")" = N_A ] || fail "GetToken (id_token) returned token type '$(json_field tokenType "$body")'"
  echo "4. GetToken (id_token): ok, $(preview "$(json_field token "$body")"), expires $(json_field expiresAt "$body")"
else
  echo "4. GetToken (id_token): skipped, no ID_TOKEN given"
fi

# 5. RevokeSession: logout, here and at the provider.
rpc RevokeSession "{\"userId\":$u,\"sessionId\":$sid}"
expect_ok RevokeSession
echo "5. RevokeSession: ok"

# 6. The session is gone: the Connect protocol answers HTTP 404 with code not_found.
rpc GetToken "{\"userId\":$u,\"sessionId\":$sid}"
code=$(json_field code "$body")
[ "$status" = 404 ] && [ "$code" = not_found ] ||
  fail "GetToken after RevokeSession: expected NOT_FOUND, got HTTP $status${code:+, code $code}"
echo "6. GetToken after RevokeSession: NOT_FOUND, as expected ($(json_field message "$body"))"

echo "all steps passed"
