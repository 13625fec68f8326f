#!/usr/bin/env bash
# dledger-rs beside the disk limit and etcd, on this machine, in one run.
#
#   bench/compare.sh [--dir DIR] [--seconds S]
#
# Prints one table: fio (io_uring, O_DIRECT, fdatasync per write, pre-written
# file) at 4 KiB, 64 KiB, 1 MiB and 4 MiB; a 3-member etcd cluster and a 3-node dledger
# cluster on 127.0.0.1 under 256 B single-entry appends from 1, 64 and 1024
# clients (both over 16 shared connections, as etcd's clients share gRPC
# channels); and dledger with client batches of 256 entries, its MB/s set
# against fio at the write size the nodes used. Installs fio,
# etcd-server and protoc when missing, stops exactly the processes it
# started, and takes about 5 minutes.
set -euo pipefail
dir=./compare-data
seconds=5
while [ $# -gt 0 ]; do
  case "$1" in
    --dir) dir=$2; shift 2 ;;
    --seconds) seconds=$2; shift 2 ;;
    *) echo "usage: $0 [--dir DIR] [--seconds S]" >&2; exit 2 ;;
  esac
done
here=$(cd "$(dirname "$0")/.." && pwd)
need=()
command -v fio >/dev/null || need+=(fio)
command -v etcd >/dev/null || need+=(etcd-server)
command -v protoc >/dev/null || need+=(protobuf-compiler)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}") >/dev/null
fi
echo "building" >&2
cargo build --release -q --manifest-path "$here/Cargo.toml" -p dledger --bin dledger
cargo build --release -q --manifest-path "$here/Cargo.toml" -p dledger-bench --features etcd --bin etcd-bench
dledger="$here/target/release/dledger"
etcdbench="$here/target/release/etcd-bench"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
work="$dir/run-$$"
mkdir -p "$work"
etcd_pids=()
cleanup() {
  for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  "$dledger" quickstart stop --dir "$work/dledger" >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

j() { python3 -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(d[k]) for k in sys.argv[1:]))" "$@"; }

# --- the disk ---
fio_mb() {
  fio --name=limit --directory="$work" --size=512M --bs="$1" --rw=write --ioengine=io_uring --direct=1 \
      --fdatasync=1 --runtime="$seconds" --time_based --output-format=json 2>/dev/null |
  python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f %.0f" % (w["bw_bytes"]/1e6, w["iops"]))'
  rm -f "$work"/limit.*
}
read -r fio4_mb fio4_iops < <(fio_mb 4k)
read -r fio64_mb fio64_iops < <(fio_mb 64k)
read -r fio1m_mb fio1m_iops < <(fio_mb 1m)
read -r fio4m_mb fio4m_iops < <(fio_mb 4m)

# --- etcd: three members on 127.0.0.1, ports below the ephemeral range ---
base=$(( 20000 + RANDOM % 9000 ))
cluster=""
for i in 1 2 3; do cluster+="e$i=http://127.0.0.1:$((base + 10 + i)),"; done
cluster=${cluster%,}
for i in 1 2 3; do
  etcd --name "e$i" --data-dir "$work/etcd$i" \
    --listen-client-urls "http://127.0.0.1:$((base + i))" --advertise-client-urls "http://127.0.0.1:$((base + i))" \
    --listen-peer-urls "http://127.0.0.1:$((base + 10 + i))" --initial-advertise-peer-urls "http://127.0.0.1:$((base + 10 + i))" \
    --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token "compare-$$" \
    >"$work/etcd$i.log" 2>&1 &
  etcd_pids+=($!)
done
etcd_eps="http://127.0.0.1:$((base + 1)),http://127.0.0.1:$((base + 2)),http://127.0.0.1:$((base + 3))"
for _ in $(seq 100); do
  "$etcdbench" --endpoints "$etcd_eps" --clients 1 --seconds 0.2 --warmup 0 >/dev/null 2>&1 && break
  sleep 0.2
done
declare -A etcd_eps_res etcd_p99 etcd_p50
for c in 1 64 1024; do
  read -r e p50 p99 < <("$etcdbench" --endpoints "$etcd_eps" --clients "$c" --connections 16 --seconds "$seconds" --warmup 1 \
    | j entries_per_sec p50_ms p99_ms)
  etcd_eps_res[$c]=$e; etcd_p50[$c]=$p50; etcd_p99[$c]=$p99
done
# Stopped and gone before dledger starts: a member still flushing would share the disk and CPUs.
for p in "${etcd_pids[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${etcd_pids[@]}"; do wait "$p" 2>/dev/null || true; done
etcd_pids=()

# --- dledger: the quick start's three nodes ---
"$dledger" quickstart start --dir "$work/dledger" --base-port 0 >/dev/null
eps=$(cat "$work/dledger/endpoints")
declare -A dl_eps dl_p99 dl_p50
for c in 1 64 1024; do
  read -r e p50 p99 < <("$dledger" bench --endpoints "$eps" --clients "$c" --connections 16 --entry-size 256 --seconds "$seconds" --warmup 1 --json 2>/dev/null \
    | j entries_per_sec p50_ms p99_ms)
  dl_eps[$c]=$e; dl_p50[$c]=$p50; dl_p99[$c]=$p99
done
# The engine's writes during the batched run: bytes and batches over all three nodes.
writes() {
  python3 - "$(cat "$work/dledger/metrics")" <<'PY'
import sys, urllib.request
b = n = 0
for a in sys.argv[1].split(","):
    for line in urllib.request.urlopen("http://%s/metrics" % a, timeout=5).read().decode().splitlines():
        if line.startswith("dledger_bytes_written_total"): b += float(line.split()[-1])
        if line.startswith("dledger_write_sync_latency_us_count"): n += float(line.split()[-1])
print("%d %d" % (b, n))
PY
}
read -r wb0 wn0 < <(writes)
read -r be bp50 bp99 bmb < <("$dledger" bench --endpoints "$eps" --clients 64 --connections 16 --batch 256 --entry-size 256 --seconds "$seconds" --warmup 1 --json 2>/dev/null \
  | j entries_per_sec p50_ms p99_ms mb_per_sec)
read -r wb1 wn1 < <(writes)

echo
echo "dledger-rs vs etcd $(etcd --version | head -1 | awk '{print $3}') and the disk, $(date -u +%F), $(nproc) cores, $(uname -r)"
echo "disk (fio, O_DIRECT + fdatasync per write): 4 KiB ${fio4_mb} MB/s (${fio4_iops} commits/s); 64 KiB ${fio64_mb} MB/s; 1 MiB ${fio1m_mb} MB/s; 4 MiB ${fio4m_mb} MB/s"
printf '%-26s %12s %9s %9s %12s %9s %9s %8s %8s\n' "load (256 B entries)" "etcd e/s" "p50 ms" "p99 ms" "dledger e/s" "p50 ms" "p99 ms" "x e/s" "p99 x"
for c in 1 64 1024; do
  python3 - "$c" "${etcd_eps_res[$c]}" "${etcd_p50[$c]}" "${etcd_p99[$c]}" "${dl_eps[$c]}" "${dl_p50[$c]}" "${dl_p99[$c]}" <<'PY'
import sys
c, ee, e50, e99, de, d50, d99 = sys.argv[1], *map(float, sys.argv[2:])
print("%-26s %12.0f %9.3f %9.3f %12.0f %9.3f %9.3f %8.2f %8.2f" % (f"{c} client(s), 1 per request", ee, e50, e99, de, d50, d99, de / max(ee, 1e-9), d99 / max(e99, 1e-9)))
PY
done
python3 - "$be" "$bp50" "$bp99" "$bmb" "$fio64_mb" "$fio1m_mb" "$fio4m_mb" "$((wb1 - wb0))" "$((wn1 - wn0))" <<'PY'
import math, sys
e, p50, p99, mb, fio64, fio1m, fio4m, wbytes, wcount = map(float, sys.argv[1:])
print("%-26s %12s %9s %9s %12.0f %9.3f %9.3f" % ("64 clients x 256 batches", "-", "-", "-", e, p50, p99))
# Compare with fio at the write size the nodes actually used (of those measured, the nearest).
size = wbytes / max(wcount, 1)
fio, at = min([(fio64, "64 KiB", 64 << 10), (fio1m, "1 MiB", 1 << 20), (fio4m, "4 MiB", 4 << 20)],
              key=lambda f: abs(math.log(max(size, 1) / f[2])))[:2]
print("dledger batched: %.1f MB/s of payload; x3 replicas on one disk = %.1f MB/s; typical write %.0f KiB; %.0f%% of fio %s (%.1f MB/s)"
      % (mb, 3 * mb, size / 1024, 100 * 3 * mb / fio, at, fio))
PY
