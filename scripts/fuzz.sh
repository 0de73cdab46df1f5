#!/usr/bin/env bash
# Runs the property-based fuzzers (parsers in tests/fuzz_parsers.rs; page
# tokens, resource versions and every method's request bytes against a real
# API server in apiserver/tests/fuzz.rs) for as long as asked:
#
#   scripts/fuzz.sh            # 10 minutes
#   scripts/fuzz.sh 2h         # or s, m, h
#   CASES=100000 scripts/fuzz.sh 30m   # cases per round (default 20,000)
#
# Each round uses new random cases. A failure stops the run; proptest has
# then saved the failing input (shrunk) in the test's .proptest-regressions
# file, which is replayed first by every later run, CI's included: commit it
# with the fix. CI runs the same tests with proptest's default 256 cases.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10m}"
case "$duration" in
  *h) seconds=$(( ${duration%h} * 3600 )) ;;
  *m) seconds=$(( ${duration%m} * 60 )) ;;
  *s) seconds=${duration%s} ;;
  *) seconds=$duration ;;
esac
export PROPTEST_CASES="${CASES:-20000}"
cargo build --tests -p skiff -p skiff-apiserver >&2
deadline=$(( $(date +%s) + seconds ))
round=0
while [ "$(date +%s)" -lt "$deadline" ]; do
  round=$(( round + 1 ))
  echo "== round $round ($PROPTEST_CASES cases per property)" >&2
  if ! cargo test -q -p skiff --test fuzz_parsers \
       || ! cargo test -q -p skiff-apiserver --test fuzz; then
    echo "fuzz: a property failed in round $round; its input is kept in the" \
      ".proptest-regressions file next to the test (git status shows it)" >&2
    exit 1
  fi
done
echo "fuzz: $round rounds of $PROPTEST_CASES cases per property, no failure" >&2
