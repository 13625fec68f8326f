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
seconds=10
rounds=2
. "$(dirname "$0")/lib.sh"
bench_setup ./retention-bench-data "$@"

fio_1m=$(fio_limit 5)

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
