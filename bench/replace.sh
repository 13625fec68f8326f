#!/usr/bin/env bash
# Replacing a node: the quick start's three nodes (16 MiB segments, no
# retention) are filled until the leader's log holds --log-gib GiB
# (LOG_GIB=1 by default); a fourth node is started empty with `--join`,
# and `dledger member replace --old F --new-address A` replaces a follower
# F with it (learner, catch-up from entry 1, promotion, removal of F) while
# `dledger bench` (16 clients x 64-entry batches of 256 bytes) runs; the
# same bench, as long, with no change running is the baseline. Prints the
# replacement's seconds and both benches' throughput and p99, beside the
# disk's limit (fio) on the same disk.
#
#   bench/replace.sh [--dir DIR] [--seconds S] [--rounds N]     (S: the bench's length, 20 by default)
set -euo pipefail
seconds=20
rounds=1
log_gib=${LOG_GIB:-1}
. "$(dirname "$0")/lib.sh"
bench_setup ./replace-bench-data "$@"

fio_1m=$(fio_limit 5)

status() { # $1 endpoints; prints "node role last commit" per node
  "$dledger" cluster --endpoints "$1" --json 2>/dev/null |
    python3 -c 'import json,sys
for r in json.load(sys.stdin):
    print(r.get("node") or 0, r["role"], r.get("last_index") or 0, r.get("commit_index") or 0)'
}

bench_json() { # $1 endpoints, $2 seconds; prints "entries_per_sec p99_ms"
  "$dledger" bench --endpoints "$1" --clients 16 --connections 8 --batch 64 --entry-size 256 \
      --seconds "$2" --warmup 0 --json 2>/dev/null |
    python3 -c 'import json,sys; r=json.load(sys.stdin); print("%.0f %.2f" % (r["entries_per_sec"], r["p99_ms"]))'
}

run() { # prints log_gib replace_s during_eps during_p99 baseline_eps baseline_p99
  rm -rf "$work/q"
  "$dledger" quickstart start --dir "$work/q" --base-port 0 --config-extra $'segment_mib = 16\nmax_batch_kib = 1024' >/dev/null
  local eps; eps=$(cat "$work/q/endpoints")
  sleep 1 # the first election: the quick start waits for listeners only
  # One entry takes about 256 + 24 bytes in a segment.
  local need=$(( log_gib * 1073741824 / 280 ))
  while :; do
    "$dledger" bench --endpoints "$eps" --clients 64 --connections 16 --batch 256 --entry-size 256 --seconds 5 --warmup 0 >/dev/null 2>&1
    local last; last=$(status "$eps" | awk '$2 == "leader" {print $3}')
    [ "${last:-0}" -ge "$need" ] && break
  done
  local baseline; baseline=$(bench_json "$eps" "$seconds")
  local leader follower=0
  leader=$(status "$eps" | awk '$2 == "leader" {print $1}')
  for n in 1 2 3; do [ "$n" != "$leader" ] && { follower=$n; break; }; done
  # Node 4: node 1's config with its own id, port and directory, joined.
  local port; port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  local ep4="127.0.0.1:$port"
  sed -e "s/^node_id = .*/node_id = 4/" -e "s/^listen = .*/listen = \"$ep4\"/" -e '/^metrics_listen/d' \
      -e "s|^data_dir = .*|data_dir = \"$work/q/n4\"|" "$work/q/n1.toml" >"$work/q/n4.toml"
  printf '[[peers]]\nid = 4\naddress = "%s"\n' "$ep4" >>"$work/q/n4.toml"
  setsid "$dledger" server --join --config "$work/q/n4.toml" >"$work/q/n4.log" 2>&1 &
  echo $! >"$work/q/n4.pid"
  until "$dledger" cluster --endpoints "$ep4" 2>/dev/null | grep -q follower; do sleep 0.05; done
  local during_file="$work/during.json"
  bench_json "$eps" "$seconds" >"$during_file" &
  local bench_pid=$!
  sleep 2 # the bench's own start, so that the whole replacement runs under load
  local t0; t0=$(date +%s.%N)
  "$dledger" member replace --endpoints "$eps" --old "$follower" --new-address "$ep4" >"$work/replace.out"
  local t1; t1=$(date +%s.%N)
  wait "$bench_pid"
  kill -TERM "$(cat "$work/q/n4.pid")" 2>/dev/null || true
  "$dledger" quickstart stop --dir "$work/q" >/dev/null
  python3 -c "print('%.2f' % ($need * 280 / 2**30), '%.2f' % ($t1 - $t0), '$(cat "$during_file")', '$baseline')"
}

echo "replacing a follower, $(date -u +%F), $(nproc) cores, $(uname -r); disk (fio 1 MiB, O_DIRECT + fdatasync): $fio_1m MB/s"
printf '%-6s %8s %10s %18s %15s %20s %17s\n' round log_gib replace_s during_entries_s during_p99_ms baseline_entries_s baseline_p99_ms
for r in $(seq "$rounds"); do
  read -r lg rs de dp be bp < <(run)
  printf '%-6s %8s %10s %18s %15s %20s %17s\n' "$r" "$lg" "$rs" "$de" "$dp" "$be" "$bp"
done
