#!/usr/bin/env bash
# Builds the Go example client with Debian's toolchain and libraries only
# (GOPATH mode: no modules, no proxy, no network) and runs it against the
# service at ADDR.
#
#   examples/go/run.sh ADDR [client flags…]     # e.g. examples/go/run.sh 127.0.0.1:50051
#   examples/go/run.sh --build                  # build only
#
# The token set comes from the environment: ACCESS_TOKEN (required),
# REFRESH_TOKEN, ID_TOKEN, EXPIRES_IN; the provider id from PROVIDER. The
# user id from USER_ID (default go-example-user).
#
# Debian packages: golang-go golang-google-grpc-dev golang-google-protobuf-dev
# protoc-gen-go protoc-gen-go-grpc protobuf-compiler libprotobuf-dev.
# BUILD_DIR (default examples/go/build, git-ignored) holds the generated stubs
# and the binary. Exit status: the client's (0 only when every step passed),
# or 2 when it cannot be built.
set -euo pipefail

if [ $# -lt 1 ] || [ -z "$1" ]; then
  echo "usage: $0 ADDR [client flags…]   (ADDR is host:port of the gRPC listener), or $0 --build" >&2
  exit 2
fi
addr="$1"
shift

here="$(cd "$(dirname "$0")" && pwd)"
proto_dir="$(cd "$here/../../proto" && pwd)"
build="${BUILD_DIR:-$here/build}"
go_bin="${GO:-/usr/bin/go}"
debian_gopath="${DEBIAN_GOPATH:-/usr/share/gocode}"
wkt="${PROTOBUF_INCLUDE:-/usr/include}"

missing() { echo "cannot build the Go client: $*" >&2; exit 2; }
[ -x "$go_bin" ] || missing "$go_bin not found (apt-get install golang-go)"
command -v protoc >/dev/null || missing "protoc not found (apt-get install protobuf-compiler)"
command -v protoc-gen-go >/dev/null || missing "protoc-gen-go not found (apt-get install protoc-gen-go)"
command -v protoc-gen-go-grpc >/dev/null || missing "protoc-gen-go-grpc not found (apt-get install protoc-gen-go-grpc)"
[ -f "$wkt/google/protobuf/timestamp.proto" ] || missing "$wkt/google/protobuf/timestamp.proto not found (apt-get install libprotobuf-dev)"
for pkg in google.golang.org/grpc google.golang.org/protobuf google.golang.org/genproto/googleapis/rpc/errdetails; do
  [ -d "$debian_gopath/src/$pkg" ] || missing "$debian_gopath/src/$pkg not found (apt-get install golang-google-grpc-dev golang-google-protobuf-dev)"
done

# The stubs go in their own GOPATH entry, under an import path of our
# choosing. The proto is the shared contract and declares no go_package, so
# the import path is given to the plugins with M options instead.
import_path="tokenservice.example/gen/tokenservice/v1"
proto_file="tokenservice/v1/token_service.proto"
mkdir -p "$build/gopath/src" "$build/bin"
rm -rf "$build/gopath/src/$import_path"
protoc -I "$proto_dir" -I "$wkt" \
  --go_out="$build/gopath/src" --go_opt="M$proto_file=$import_path;tokenservicev1" \
  --go-grpc_out="$build/gopath/src" --go-grpc_opt="M$proto_file=$import_path;tokenservicev1" \
  "$proto_file"

# CGO off: a pure Go build needs no C compiler (apt installs golang-go without its recommended gcc in CI).
export GO111MODULE=off GOPROXY=off GOFLAGS= CGO_ENABLED=0 GOPATH="$build/gopath:$debian_gopath"
# A build cache of its own when HOME has none to offer (CI runners, sandboxes).
case "$("$go_bin" env GOCACHE 2>/dev/null || true)" in "" | off) export GOCACHE="$build/cache" ;; esac
(cd "$here" && "$go_bin" build -o "$build/bin/tokenservice-go-client" .) ||
  missing "go build failed (see above)"

bin="$build/bin/tokenservice-go-client"
if [ "$addr" = --build ]; then echo "built $bin"; exit 0; fi
exec "$bin" -target "$addr" "$@"
