#!/usr/bin/env bash
# What continuous purging costs: the quick start's three nodes with 8 MiB
# segments, without retention and with `[retention] max_log_mib = 64`
# (a purge every few hundred milliseconds at full speed), alternated, under
# `dledger bench` at 64 clients x 256-entry batches; the worst per-second
# p99.9 of each run (a purge that stalls appends shows there); the disk's
# limit (fio, O_DIRECT + fdatasync, 1 MiB writes) on the same disk.
#
#   bench/retention.sh [--dir DIR] [--seconds S] [--rounds N]
set -euo pipefail
dir=./retention-bench-data
seconds=10
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

fio_1m=$(fio --name=limit --directory="$work" --size=512M --bs=1m --rw=write --ioengine=io_uring --direct=1 \
    --fdatasync=1 --runtime=5 --time_based --output-format=json 2>/dev/null |
  python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f" % (w["bw_bytes"]/1e6))')
rm -f "$work"/limit.*

run() { # $1: extra config; prints e/s p99 worst-second-p999 purges first_index disk_mib
  rm -rf "$work/q"
  "$dledger" quickstart start --dir "$work/q" --base-port 0 --config-extra "$1" >/dev/null
  local eps; eps=$(cat "$work/q/endpoints")
  local out
  out=$("$dledger" bench --endpoints "$eps" --clients 64 --connections 16 --batch 256 --entry-size 256 \
      --seconds "$seconds" --warmup 1 --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["entries_per_sec"], d["p99_ms"], max(s["p999_ms"] for s in d["timeline"]))')
  local m; m=$(cut -d, -f1 "$work/q/metrics")
  local purges first disk
  purges=$(curl -s "http://$m/metrics" | awk -F' ' '/^dledger_log_purges_total/ {print $2}')
  first=$(curl -s "http://$m/metrics" | awk -F' ' '/^dledger_log_first_index/ {print $2}')
  disk=$(curl -s "http://$m/metrics" | awk -F' ' '/^dledger_log_disk_bytes/ {printf "%d", $2/1048576}')
  "$dledger" quickstart stop --dir "$work/q" >/dev/null
  echo "$out $purges $first $disk"
}

base=$'segment_mib = 8'
echo "retention cost, $(date -u +%F), $(nproc) cores, $(uname -r); disk (fio 1 MiB, O_DIRECT + fdatasync): $fio_1m MB/s"
printf '%-6s %-10s %12s %8s %16s %7s %12s %9s\n' round retention "64x256 e/s" p99_ms "worst-s p999_ms" purges first_index disk_mib
for r in $(seq "$rounds"); do
  for mode in off on; do
    extra=$base
    [ "$mode" = on ] && extra=$base$'\n[retention]\nmax_log_mib = 64\nhold_for_followers_mib = 64'
    read -r eps p99 p999 purges first disk < <(run "$extra")
    printf '%-6s %-10s %12.0f %8.2f %16.2f %7s %12s %9s\n' "$r" "$mode" "$eps" "$p99" "$p999" "$purges" "$first" "$disk"
  done
done
