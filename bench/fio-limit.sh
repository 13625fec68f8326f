#!/usr/bin/env bash
# The disk's limit beside the engine, on the same file system, in one run.
#
#   bench/fio-limit.sh [--dir DIR] [--seconds S]
#
# For each write size (4 KiB, 64 KiB, 256 KiB) it runs fio (io_uring, O_DIRECT,
# sequential writes into a pre-written file, fdatasync after every write), then
# engine-bench with one producer whose entries fill exactly one write of that
# size, and prints both with the ratio. It adds the two figures the engine
# issue sets targets for: 1 producer of 128 B entries (p99 against fio's 4 KiB
# write+fdatasync) and 256 producers of 128 B entries (entries/s). The engine
# runs with 1 GiB of size retention, as a deployment would, so purged segments
# are recycled instead of new ones zero-filled.
set -euo pipefail
dir=./fio-limit-data
seconds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "usage: $0 [--dir DIR] [--seconds S]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
if ! command -v fio >/dev/null; then
  echo "installing fio" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio) >/dev/null
fi
cargo build --release -q -p dledger-bench --manifest-path "$here/Cargo.toml"
bench="$here/target/release/engine-bench"
mkdir -p "$dir"
fiodir="$dir/fio"; mkdir -p "$fiodir"
trap 'rm -rf "$fiodir" "$dir/engine"' EXIT

# fio: one write + fdatasync per I/O. Prints "MB/s p50_us p99_us", where the latency is
# the write's completion latency plus the fdatasync's, percentile by percentile
# (fio reports the two separately).
fio_run() {
  fio --name=limit --directory="$fiodir" --size=512M --bs="$1" --rw=write --ioengine=io_uring \
      --direct=1 --fdatasync=1 --runtime="$seconds" --time_based --output-format=json 2>/dev/null |
  python3 -c '
import json, sys
j = json.load(sys.stdin)["jobs"][0]
w, s = j["write"], j["sync"]
p = lambda d, k: d["percentile"][k] / 1000.0
print("%.2f %.0f %.0f %.0f" % (w["bw_bytes"] / 1e6, p(w["clat_ns"], "50.000000") + p(s["lat_ns"], "50.000000"),
      p(w["clat_ns"], "99.000000") + p(s["lat_ns"], "99.000000"), w["iops"]))'
}

engine_run() { # producers entry_size -> "MB/s p50 p99 entries/s"
  "$bench" --dir "$dir/engine" --producers "$1" --entry-size "$2" --seconds "$seconds" --warmup 1 --retain-mib 1024 --json |
  python3 -c '
import json, sys
j = json.loads(sys.stdin.read())
print("%.2f %d %d %.0f %s" % (j["mb_per_sec"], j["p50_us"], j["p99_us"], j["entries_per_sec"], j["backend"]))'
}

printf '%-34s %12s %12s %7s %10s %10s\n' "case" "fio MB/s" "engine MB/s" "ratio" "fio p99us" "eng p99us"
for bs in 4096 65536 262144; do
  read -r fmb fp50 fp99 fiops < <(fio_run "$bs")
  read -r emb ep50 ep99 eps backend < <(engine_run 1 $((bs - 56)))
  [ "$bs" = 4096 ] && fio4k_p99=$fp99 && fio4k_iops=$fiops
  printf '%-34s %12s %12s %7s %10s %10s\n' "$((bs / 1024)) KiB writes, 1 producer" "$fmb" "$emb" \
    "$(python3 -c "print('%.2f' % ($emb / $fmb))")" "$fp99" "$ep99"
done
read -r emb ep50 ep99 eps backend < <(engine_run 1 128)
printf '%-34s %12s %12s %7s %10s %10s\n' "128 B entries, 1 producer" "-" "$emb" "-" "$fio4k_p99" "$ep99"
echo "  p99 ratio engine/fio-4KiB: $(python3 -c "print('%.2f' % ($ep99 / $fio4k_p99))") (target <= 1.2)"
read -r emb ep50 ep99 eps backend < <(engine_run 256 128)
echo "256 producers x 128 B: $eps durable entries/s (target >= 1000000); fio 4 KiB commits/s: $fio4k_iops; backend $backend"
