#!/usr/bin/env bash
# Catch-up from behind the leader's log start: the quick start's three nodes
# with 16 MiB segments and `[retention] max_log_mib = 256` (the hold for a
# stopped follower released after 2 s); one follower is stopped, `dledger
# bench` (64 clients x 256-entry batches of 256 bytes) writes until the
# leader's log starts at least --behind-gib GiB of entries past the
# follower's last one, the load stops, the follower restarts, and the time
# until it has committed the leader's last index is measured, with the peer
# bytes it received (`dledger_peer_bytes_received_total`). Run for the plain
# log and for the built-in `kv` state machine (a snapshot is fetched first;
# `dledger bench` writes one payload over and over, so the map holds one
# key and the snapshot is small: the row measures the install's protocol,
# not its size); the disk's limit (fio) on the same disk.
#
#   bench/catch-up.sh [--dir DIR] [--rounds N]     (BEHIND_GIB=1 by default)
set -euo pipefail
seconds=5
rounds=1
behind_gib=${BEHIND_GIB:-1}
. "$(dirname "$0")/lib.sh"
bench_setup ./catch-up-bench-data "$@"

fio_1m=$(fio_limit 5)

status() { # $1 endpoints; prints "node role first last commit" per node
  "$dledger" cluster --endpoints "$1" --json 2>/dev/null |
    python3 -c 'import json,sys
for r in json.load(sys.stdin):
    print(r.get("node") or 0, r["role"], r.get("first_index") or 0, r.get("last_index") or 0, r.get("commit_index") or 0)'
}

metric() { # $1 metrics address, $2 name prefix
  curl -s "http://$1/metrics" | awk -v n="$2" 'index($1, n) == 1 {s += $2} END {printf "%d", s}'
}

run() { # $1 state machine (none|kv); prints behind_entries behind_gib leader_log_mib seconds received_mib snapshot_bytes
  rm -rf "$work/q"
  local sm=()
  [ "$1" = kv ] && sm=(--state-machine kv)
  "$dledger" quickstart start --dir "$work/q" --base-port 0 "${sm[@]}" --config-extra $'segment_mib = 16\nmax_batch_kib = 1024\n[retention]\nmax_log_mib = 256\nhold_for_followers_mib = 64\nhold_for_followers_secs = 2' >/dev/null
  local eps; eps=$(cat "$work/q/endpoints")
  local leader follower=0 f_last=0
  sleep 1 # the first election: the quick start waits for listeners only
  leader=$(status "$eps" | awk '$2 == "leader" {print $1}')
  for n in 1 2 3; do [ "$n" != "$leader" ] && { follower=$n; break; }; done
  # Some entries first, so the follower holds a log of its own.
  "$dledger" bench --endpoints "$eps" --clients 16 --batch 64 --entry-size 256 --seconds 1 --warmup 0 >/dev/null 2>&1
  f_last=$(status "$eps" | awk -v f="$follower" '$1 == f {print $4}')
  kill -TERM "$(cat "$work/q/n$follower.pid")"
  while kill -0 "$(cat "$work/q/n$follower.pid")" 2>/dev/null; do sleep 0.05; done
  local live; live=$(echo "$eps" | tr ',' '\n' | awk -v f="$follower" 'NR != f' | paste -sd,)
  # One entry takes about 256 + 24 bytes in a segment.
  local need=$(( behind_gib * 1073741824 / 280 ))
  local first=0
  while :; do
    "$dledger" bench --endpoints "$live" --clients 64 --connections 16 --batch 256 --entry-size 256 --seconds "$seconds" --warmup 0 >/dev/null 2>&1
    first=$(status "$live" | awk -v l="$leader" '$1 == l {print $3}')
    [ $(( first - f_last )) -ge "$need" ] && break
  done
  local l_first l_last; read -r l_first l_last < <(status "$live" | awk -v l="$leader" '$1 == l {print $3, $4}')
  local lm; lm=$(cut -d, -f"$leader" "$work/q/metrics")
  local leader_log; leader_log=$(( $(metric "$lm" dledger_log_disk_bytes) / 1048576 ))
  # Restart the follower as the quick start ran it, and time its catch-up.
  local fm; fm=$(cut -d, -f"$follower" "$work/q/metrics")
  setsid "$dledger" server --config "$work/q/n$follower.toml" "${sm[@]}" >>"$work/q/n$follower.log" 2>&1 &
  echo $! >"$work/q/n$follower.pid"
  local t0; t0=$(date +%s.%N)
  while :; do
    local c; c=$(status "$eps" | awk -v f="$follower" '$1 == f {print $5}')
    [ -n "$c" ] && [ "$c" -ge "$l_last" ] && break
    sleep 0.05
  done
  local t1; t1=$(date +%s.%N)
  local received; received=$(( $(metric "$fm" dledger_peer_bytes_received_total) / 1048576 ))
  local snap_bytes=-
  if [ "$1" = kv ]; then
    snap_bytes=$(grep -a "fetched and installed" "$work/q/n$follower.log" | tail -1 | sed 's/\x1b\[[0-9;]*m//g' | sed -n 's/.*bytes=\([0-9]*\).*/\1/p')
    snap_bytes=${snap_bytes:--}
  fi
  "$dledger" quickstart stop --dir "$work/q" >/dev/null
  python3 -c "print($l_first - $f_last, '%.2f' % (($l_first - $f_last) * 280 / 2**30), $leader_log, '%.2f' % ($t1 - $t0), $received, '$snap_bytes')"
}

echo "catch-up from behind the log start, $(date -u +%F), $(nproc) cores, $(uname -r); disk (fio 1 MiB, O_DIRECT + fdatasync): $fio_1m MB/s"
printf '%-6s %-14s %14s %11s %15s %12s %13s %15s\n' round state_machine behind_entries behind_gib leader_log_mib catch_up_s received_mib snapshot_bytes
for r in $(seq "$rounds"); do
  for sm in none kv; do
    read -r be bg ll cs rm sn < <(run "$sm")
    printf '%-6s %-14s %14s %11s %15s %12s %13s %15s\n' "$r" "$sm" "$be" "$bg" "$ll" "$cs" "$rm" "$sn"
  done
done
