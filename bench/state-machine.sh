#!/usr/bin/env bash
# What a state machine costs a node, in one run: the quick start's three
# nodes without a state machine and with the built-in `checksum` one
# (`dledger server --state-machine checksum`), alternated, under `dledger
# bench` at 64 clients with single entries and with 256-entry batches; the
# disk's limit (fio, O_DIRECT + fdatasync, 1 MiB writes) on the same disk.
#
#   bench/state-machine.sh [--dir DIR] [--seconds S] [--rounds N]
set -euo pipefail
seconds=5
rounds=2
. "$(dirname "$0")/lib.sh"
bench_setup ./sm-bench-data "$@"
j() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }

fio_1m=$(fio_limit "$seconds")

run() { # $1: "" or checksum; prints e/s p50 p99 for 64x1 and 64x256
  local args=()
  [ -n "$1" ] && args=(--state-machine "$1")
  rm -rf "$work/q"
  "$dledger" quickstart start --dir "$work/q" --base-port 0 "${args[@]}" >/dev/null
  local eps; eps=$(cat "$work/q/endpoints")
  local single batched
  single=$("$dledger" bench --endpoints "$eps" --clients 64 --connections 16 --entry-size 256 --seconds "$seconds" --warmup 1 --json 2>/dev/null | j entries_per_sec p50_ms p99_ms)
  batched=$("$dledger" bench --endpoints "$eps" --clients 64 --connections 16 --batch 256 --entry-size 256 --seconds "$seconds" --warmup 1 --json 2>/dev/null | j entries_per_sec p50_ms p99_ms)
  "$dledger" quickstart stop --dir "$work/q" >/dev/null
  echo "$single $batched"
}

echo "state machine cost, $(date -u +%F), $(nproc) cores, $(uname -r); disk (fio 1 MiB, O_DIRECT + fdatasync): $fio_1m MB/s"
printf '%-6s %-10s %12s %8s %8s %14s %8s %8s\n' round machine "64x1 e/s" p50_ms p99_ms "64x256 e/s" p50_ms p99_ms
declare -A sum1 sum256
for r in $(seq "$rounds"); do
  for m in none checksum; do
    arg=""; [ "$m" = checksum ] && arg=checksum
    read -r e1 a1 b1 e2 a2 b2 < <(run "$arg")
    printf '%-6s %-10s %12.0f %8.3f %8.3f %14.0f %8.3f %8.3f\n' "$r" "$m" "$e1" "$a1" "$b1" "$e2" "$a2" "$b2"
    sum1[$m]=$(python3 -c "print(${sum1[$m]:-0} + $e1)")
    sum256[$m]=$(python3 -c "print(${sum256[$m]:-0} + $e2)")
  done
done
python3 - "${sum1[none]}" "${sum1[checksum]}" "${sum256[none]}" "${sum256[checksum]}" <<'PY'
import sys
n1, c1, n2, c2 = map(float, sys.argv[1:])
print("checksum state machine vs none, mean over rounds: 64x1 %+.1f%%, 64x256 %+.1f%%" % ((c1 / n1 - 1) * 100, (c2 / n2 - 1) * 100))
PY
