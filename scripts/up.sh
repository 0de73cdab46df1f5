#!/usr/bin/env bash
# The quick start: installs what is missing (protoc, busybox-static), builds
# Skiff, and runs `skiff up`: a whole cluster on this machine with its state
# in ~/.skiff/data. Flags go to `skiff up` (see `skiff up --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh up
cargo build --release -p skiff-cli
echo "skiff is target/release/skiff; in another terminal: export PATH=\"$PWD/target/release:\$PATH\"" >&2
exec target/release/skiff up "$@"
