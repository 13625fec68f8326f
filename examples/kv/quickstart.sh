#!/usr/bin/env bash
# Three dledger-kv nodes on 127.0.0.1 in the background.
#
#   examples/kv/quickstart.sh start [DIR]   # HTTP on 8081-8083, Raft on 20921-20923; data, logs, pids in DIR
#   examples/kv/quickstart.sh stop [DIR]    # stops exactly the processes `start` started
set -euo pipefail
cmd=${1:-start}
dir=${2:-./kv-quickstart}
here=$(cd "$(dirname "$0")/../.." && pwd)
case "$cmd" in
  start)
    cargo build --release -q --manifest-path "$here/Cargo.toml" -p dledger-kv
    mkdir -p "$dir"
    dir=$(cd "$dir" && pwd)
    for i in 1 2 3; do
      {
        echo "http = \"127.0.0.1:808$i\""
        for j in 1 2 3; do printf '[[http_peers]]\nid = %s\naddress = "127.0.0.1:808%s"\n' "$j" "$j"; done
        printf '[server]\nnode_id = %s\nlisten = "127.0.0.1:2092%s"\ndata_dir = "%s/n%s"\ncores = 1\ncpus = []\n' "$i" "$i" "$dir" "$i"
        for j in 1 2 3; do printf '[[server.peers]]\nid = %s\naddress = "127.0.0.1:2092%s"\n' "$j" "$j"; done
      } > "$dir/n$i.toml"
      boot=(); [ -e "$dir/n$i" ] || boot=(--bootstrap)   # the first start only
      "$here/target/release/dledger-kv" serve --config "$dir/n$i.toml" "${boot[@]}" >> "$dir/n$i.log" 2>&1 &
      echo $! > "$dir/n$i.pid"
    done
    for _ in $(seq 100); do
      for i in 1 2 3; do
        if curl -sf "http://127.0.0.1:808$i/status" | grep -q '"role":"leader"'; then
          echo "dledger-kv: 3 nodes, HTTP on 127.0.0.1:8081-8083 (node $i leads); data and logs in $dir"
          echo "try: curl -L -X PUT --data v1 127.0.0.1:8081/kv/k1; curl -L 127.0.0.1:8082/kv/k1"
          exit 0
        fi
      done
      sleep 0.1
    done
    echo "no leader within 10 s; see $dir/n*.log" >&2
    exit 1
    ;;
  stop)
    for i in 1 2 3; do
      [ -f "$dir/n$i.pid" ] && kill "$(cat "$dir/n$i.pid")" 2>/dev/null || true
      rm -f "$dir/n$i.pid"
    done
    ;;
  *) echo "usage: $0 start|stop [DIR]" >&2; exit 2 ;;
esac
