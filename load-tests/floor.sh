#!/usr/bin/env bash
# The floor under the ingestion benchmark: what a bare axum server with the ingestion
# API's shape (src/http_floor.rs: parse the event, wait as long as the broker's
# acknowledgement takes, answer) costs per request on this machine, driven by the same
# load generator and measured the same way as load-tests/run.sh (CPU seconds of the
# server process per 1,000 events, from /proc). Once on the shared work-stealing runtime
# (--lanes 0), once on one lane per core (mlops_runtime::lanes), as the platform's
# ingestion now serves. No broker, no peer: compare its figures with run.sh's.
#
#   load-tests/floor.sh          (BENCH_SECONDS=15, BENCH_SINGLE_CONCURRENCY="32 256",
#                                 BENCH_ROUNDS=2: the two modes alternate this many times)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
duration=${BENCH_SECONDS:-15}
rounds=${BENCH_ROUNDS:-2}
cores=$(nproc)
cargo build --release --locked --bin http-floor --bin ingest-load
target=${CARGO_TARGET_DIR:-$root/target}/release
port=39199
server=""
trap '[ -n "$server" ] && kill "$server" 2>/dev/null; wait 2>/dev/null || true' EXIT

results=$(mktemp)
for round in $(seq "$rounds"); do
  for lanes in 0 "$cores"; do
    "$target/http-floor" --listen "127.0.0.1:$port" --lanes "$lanes" &
    server=$!
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.1
    done
    for clients in ${BENCH_SINGLE_CONCURRENCY:-32 256}; do
      "$target/ingest-load" --label "lanes=$lanes" --url "http://127.0.0.1:$port" \
        --server-pid "$server" --dataset "floor_${round}" --mode single \
        --concurrency "$clients" --duration "$duration" | tee -a "$results"
    done
    kill "$server"
    wait "$server" 2>/dev/null || true
    server=""
    port=$((port + 1))
  done
done

python3 - "$results" <<'PY'
import json, sys
from collections import defaultdict
runs = defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[(r["concurrency"], r["label"])].append(r["cpu_seconds_per_1000_events"])
print("\n| connections | serving | CPU s / 1k events, each round | mean |")
print("|---:|---|---|---:|")
for (clients, label), cpu in sorted(runs.items()):
    print(f"| {clients} | {label} | {', '.join(f'{c:.4f}' for c in cpu)} | {sum(cpu)/len(cpu):.4f} |")
PY
rm -f "$results"
