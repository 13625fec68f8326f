#!/usr/bin/env bash
# A longer nemesis run with a random seed.
#
#   tests/soak.sh SECONDS
#
# Prints its seed (replay with NEMESIS_SEED), the history checker's summary,
# and exits non-zero on any violation. The last line has the form
# `acked=N lost=N divergent=N duplicates=N violations=N`.
set -euo pipefail
seconds=${1:?usage: tests/soak.sh SECONDS}
seed=${NEMESIS_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}
cd "$(dirname "$0")/.."
echo "soak: seed $seed, $seconds s"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
status=0
NEMESIS_SEED=$seed NEMESIS_SECONDS=$seconds cargo test -q --release -p dledger-tests --test nemesis -- --nocapture \
  >"$out" 2>&1 || status=$?
grep -v '^test result' "$out" | grep -vE '^(running|test ) ' || true
summary=$(grep -E '^acked=[0-9]+ lost=' "$out" | tail -n 1 || true)
if [ -z "$summary" ]; then
  echo "soak: no summary (the run failed before the check; seed $seed)" >&2
  echo "acked=0 lost=0 divergent=0 duplicates=0 violations=1"
  exit 1
fi
echo "$summary"
exit "$status"
