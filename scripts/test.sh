#!/usr/bin/env bash
# Runs every check CI runs: installs what is missing, lints the API with buf,
# builds the binaries the end-to-end tests start, and runs all tests.
# Tests start their own etcd and servers on free ports; nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh test
# pip may install into a directory that is not on PATH yet.
export PATH="$PATH:$HOME/.local/bin:$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"

echo "== buf lint" >&2
buf lint

# A clean build's incremental state is never reused and is twice the size
# of everything else in target/ (11 of 16 GB): CI machines have run out of
# disk on it. Set CARGO_INCREMENTAL=1 to keep it while iterating.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
df -h . >&2 || true

echo "== build" >&2
cargo build --workspace --bins --tests

echo "== test" >&2
# The fault suite (e2e/tests/faults.rs) starts a whole HA cluster and loads
# both cores for about a minute: it runs on its own after the rest.
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast -E 'not binary(faults)' "$@"
  cargo nextest run -p skiff-e2e --test faults --no-fail-fast "$@"
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast "$@" -- --skip the_ha_cluster
  cargo test -p skiff-e2e --test faults "$@"
fi
