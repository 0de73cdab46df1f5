#!/usr/bin/env bash
# Builds Skiff (installing protoc if missing) and runs the API server on
# embedded storage in ~/.skiff/data, listening on 127.0.0.1:6443.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cargo build --release -p skiff-cli
exec target/release/skiff apiserver "$@"
