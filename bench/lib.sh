# Shared by the quick-start benchmarks (sourced, not run):
#   bench_setup DEFAULT_DIR "$@"   parses [--dir DIR] [--seconds S] [--rounds N] (set `seconds` and
#                                  `rounds` to their defaults first), installs fio, builds dledger, and sets
#                                  `here`, `dledger`, `dir` and `work` (removed on exit, with any quick start
#                                  left running in "$work/q")
#   fio_limit SECONDS              the disk's limit: MB/s of 1 MiB O_DIRECT + fdatasync writes in "$work"
bench_setup() {
  dir=$1; shift
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
  trap bench_cleanup EXIT
}

bench_cleanup() {
  "$dledger" quickstart stop --dir "$work/q" >/dev/null 2>&1 || true
  rm -rf "$work"
}

fio_limit() {
  fio --name=limit --directory="$work" --size=512M --bs=1m --rw=write --ioengine=io_uring --direct=1 \
      --fdatasync=1 --runtime="$1" --time_based --output-format=json 2>/dev/null |
    python3 -c 'import json,sys; w=json.load(sys.stdin)["jobs"][0]["write"]; print("%.1f" % (w["bw_bytes"]/1e6))'
  rm -f "$work"/limit.*
}
