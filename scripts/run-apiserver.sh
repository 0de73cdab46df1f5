#!/usr/bin/env bash
# Builds Skiff (installing protoc if missing) and runs the API server on
# embedded storage in ~/.skiff/data, listening on 127.0.0.1:6443.
# With no arguments it serves plaintext without authentication (--insecure,
# for exploring with grpcurl); pass your own flags for TLS and credentials.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh build
cargo build --release -p skiff-cli
if [ $# -eq 0 ]; then set -- --insecure; fi
exec target/release/skiff apiserver "$@"
