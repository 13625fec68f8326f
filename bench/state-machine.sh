#!/usr/bin/env bash
# What a state machine costs a node, in one run: the quick start's three
# nodes without a state machine and with the built-in `checksum` one
# (`dledger server --state-machine checksum`), alternated, under `dledger
# bench` at 64 clients with single entries and with 256-entry batches; the
# disk's limit (fio, O_DIRECT + fdatasync, 1 MiB writes) on the same disk.
#
#   bench/state-machine.sh [--dir DIR] [--seconds S] [--rounds N]
set -euo pipefail
dir=./sm-bench-data
seconds=5
rounds=2
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    --rounds) rounds=$2; shift 2 ;;
    *) echo "usage: $0 [--dir DIR] [--seconds S] [--rounds N]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
command -v fio >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio) >/dev/null
cargo build --release -q --manifest-path "$here/Cargo.toml" -p dledger --bin dledger
dledger="$here/target/release/dledger"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work="$dir/run-$$"
mkdir -p "$work"
cleanup() {
  "$dledger" quickstart stop --dir "$work/q" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT
j() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }

fio_1m=$(fio --name=limit --directory="$work" --size=512M --bs=1m --rw=write --ioengine=io_uring --direct=1 \
    --fdatasync=1 --runtime="$seconds" --time_based --output-format=json 2>/dev/null |
  python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f" % (w["bw_bytes"]/1e6))')
rm -f "$work"/limit.*

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
