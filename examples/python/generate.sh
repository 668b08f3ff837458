#!/usr/bin/env bash
# Generates the Python stubs for tokenservice.v1 from the repository's .proto
# with Debian's protoc (protobuf-compiler) and grpc_python_plugin
# (protobuf-compiler-grpc), and the well-known types of libprotobuf-dev.
#
#   examples/python/generate.sh [OUT_DIR]     # default: examples/python/gen
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
proto_dir="$(cd "$here/../../proto" && pwd)"
out="${1:-$here/gen}"
plugin="${GRPC_PYTHON_PLUGIN:-/usr/bin/grpc_python_plugin}"

command -v protoc >/dev/null || { echo "protoc not found: apt-get install protobuf-compiler" >&2; exit 1; }
[ -x "$plugin" ] || { echo "$plugin not found: apt-get install protobuf-compiler-grpc" >&2; exit 1; }
# google/protobuf/timestamp.proto, which the contract imports, ships with libprotobuf-dev.
wkt="${PROTOBUF_INCLUDE:-/usr/include}"
[ -f "$wkt/google/protobuf/timestamp.proto" ] ||
  { echo "$wkt/google/protobuf/timestamp.proto not found: apt-get install libprotobuf-dev (or set PROTOBUF_INCLUDE)" >&2; exit 1; }

mkdir -p "$out"
protoc -I "$proto_dir" -I "$wkt" \
  --python_out="$out" \
  --grpc_python_out="$out" \
  --plugin=protoc-gen-grpc_python="$plugin" \
  tokenservice/v1/token_service.proto
echo "generated $out/tokenservice/v1/token_service_pb2.py and token_service_pb2_grpc.py"
