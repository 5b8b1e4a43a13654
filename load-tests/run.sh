#!/usr/bin/env bash
# Side-by-side ingestion benchmark on this machine: the platform's ingestion service and
# the FastAPI + aiokafka peer (peers/fastapi_ingest.py, 2 workers), both on the same
# Apache Kafka broker (aiokafka cannot talk to the embedded Tansu broker) and the same
# Schema Registry, driven by the same load generator, one after the other. Prints one
# JSON line per run and a table of both measures: events per second, and CPU seconds of
# the measured server process alone (its workers included) per 1,000 events over the
# measured window, from /proc — the fair one when broker, load generator and servers
# share the cores. Compare ratios, not absolute numbers.
#
#   load-tests/run.sh            (builds release binaries, installs the peer in a venv;
#                                 BENCH_PROFILE=1 adds a perf profile of ingestion,
#                                 BENCH_PROFILE=graph with call graphs (DWARF); BENCH_PROFILE_KEEP=dir
#                                 keeps the perf data there for `perf report -i`)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
duration=${BENCH_SECONDS:-20}
# Rounds of platform-then-peer: on shared cores one run's CPU per event moves by up to 2×
# between runs of the same code, so BENCH_ROUNDS=3 (or 5) reports the median of the
# per-round ratios with their spread.
rounds=${BENCH_ROUNDS:-1}
# The same producer linger on both sides (ms).
linger=${BENCH_LINGER_MS:-5}
cache="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}"

cargo build --release --locked --bin mlops --bin ingest-load
target=${CARGO_TARGET_DIR:-$root/target}/release
venv="$cache/bench-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r load-tests/peers/requirements.txt

work=$(mktemp -d -t mlops-bench.XXXXXX)
tests/kafka/kafka.sh start "$work/kafka" 39192
export KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39192
export MLOPS_DATA_DIR="$work/data" MLOPS_INGESTION_PORT=39180 \
  MLOPS_REGISTRY_PORT=39181 MLOPS_SERVING_PORT=39182 MLOPS_FEATURE_PORT=39183 \
  MLOPS_TRAINING_PORT=39184 MLOPS_MONITORING_PORT=39185 RUST_LOG=warn \
  MLOPS__KAFKA__LINGER_MS="$linger"
"$target/mlops" up > "$work/up.log" 2>&1 &
platform=$!
peer=""
cleanup() {
  [ -n "$peer" ] && kill "$peer" 2>/dev/null || true
  kill "$platform" 2>/dev/null || true
  wait 2>/dev/null || true
  tests/kafka/kafka.sh stop "$work/kafka"
  rm -rf "$work"
}
trap cleanup EXIT
# The load generators present the admin token `mlops up` writes on its first start.
for _ in $(seq 1200); do [ -s "$MLOPS_DATA_DIR/admin.token" ] && break; sleep 0.1; done
if [ ! -s "$MLOPS_DATA_DIR/admin.token" ]; then
  echo "run.sh: mlops up wrote no admin token; its log:" >&2
  tail -n 30 "$work/up.log" >&2
  exit 1
fi
MLOPS_TOKEN=$(cat "$MLOPS_DATA_DIR/admin.token")
export MLOPS_TOKEN
for _ in $(seq 1 240); do
  "$target/mlops" status > /dev/null 2>&1 && break
  sleep 0.5
done
"$target/mlops" status

(cd load-tests/peers && SCHEMA_REGISTRY_URL=http://127.0.0.1:39181 LINGER_MS="$linger" \
  exec "$venv/bin/uvicorn" fastapi_ingest:app --host 127.0.0.1 --port 39190 --workers 2 --log-level warning) \
  > "$work/peer.log" 2>&1 &
peer=$!
for _ in $(seq 1 120); do
  curl -s -o /dev/null http://127.0.0.1:39190/docs && break
  sleep 0.5
done
if ! curl -s -o /dev/null http://127.0.0.1:39190/docs; then
  echo "run.sh: the peer did not start; its log:" >&2
  tail -n 30 "$work/peer.log" >&2
  exit 1
fi

# The measured server processes: the platform's ingestion service alone (not the broker,
# not the other services), the peer's uvicorn with its workers.
ingestion=$(pgrep -f "mlops service ingestion" | head -1)
for round in $(seq "$rounds"); do
for side in "platform http://127.0.0.1:39180 $ingestion" "fastapi-aiokafka http://127.0.0.1:39190 $peer"; do
  set -- $side
  for clients in ${BENCH_SINGLE_CONCURRENCY:-32 256}; do
    # BENCH_PROFILE=1: a CPU profile of the platform's ingestion process during its
    # single-event runs (perf, self time by function), summarised after the table.
    perf_pid=""
    if [ -n "${BENCH_PROFILE:-}" ] && [ "$1" = platform ]; then
      graph=""
      [ "$BENCH_PROFILE" = graph ] && graph="--call-graph dwarf,16384 -F 199"
      perf record -F 999 $graph -p "$3" -o "$work/perf-$clients.data" -- sleep "$((duration + 2))" > "$work/perf-$clients.log" 2>&1 &
      perf_pid=$!
    fi
    "$target/ingest-load" --label "$1" --url "$2" --server-pid "$3" --dataset "single_${clients}_$1_$round" --mode single --concurrency "$clients" --duration "$duration"
    if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi
  done
  "$target/ingest-load" --label "$1" --url "$2" --server-pid "$3" --dataset "batch_$1_$round" --mode batch --batch-size 100 --concurrency 8 --duration "$duration"
done
done | tee "$work/results.jsonl"

# One table: both measures, platform against peer.
"$venv/bin/python" - "$work/results.jsonl" <<'PY'
import json, sys
import statistics
runs = [json.loads(line) for line in open(sys.argv[1])]
# Every run of a configuration, round by round (the file holds the rounds in order).
by = {}
for r in runs:
    by.setdefault((r["label"], r["mode"], r["concurrency"]), []).append(r)
median = lambda values: statistics.median(values)
print("| run | platform events/s | peer events/s | throughput ratio | platform CPU s / 1k events | peer CPU s / 1k events | CPU ratio | platform p50 / p99 ms | peer p50 / p99 ms |")
print("|---|---:|---:|---:|---:|---:|---:|---|---|")
spreads = []
for (label, mode, concurrency), ps in by.items():
    if label != "platform":
        continue
    ms = by[("fastapi-aiokafka", mode, concurrency)]
    # Each round's platform run against the same round's peer run; the medians of those.
    pairs = list(zip(ps, ms))
    cpu = lambda r: r["cpu_seconds_per_1000_events"]
    cpu_ratios = [cpu(m) / max(cpu(p), 1e-9) for p, m in pairs]
    rate_ratios = [p["events_per_second"] / max(m["events_per_second"], 1) for p, m in pairs]
    of = lambda runs, key: median([r[key] for r in runs])
    name = "single event" if mode == "single" else f"{ps[0]['batch_size']}-event batch"
    print(f"| {name}, {concurrency} connections | {of(ps, 'events_per_second'):,.0f} | {of(ms, 'events_per_second'):,.0f} | "
          f"**{median(rate_ratios):.1f}×** | {of(ps, 'cpu_seconds_per_1000_events'):.3f} | "
          f"{of(ms, 'cpu_seconds_per_1000_events'):.3f} | **{median(cpu_ratios):.1f}×** | "
          f"{of(ps, 'p50_ms')} / {of(ps, 'p99_ms')} | {of(ms, 'p50_ms')} / {of(ms, 'p99_ms')} |")
    spreads.append((name, concurrency, cpu_ratios))
if len(spreads[0][2]) > 1:
    print(f"\nMedians of {len(spreads[0][2])} rounds. CPU ratio round by round:")
    for name, concurrency, ratios in spreads:
        print(f"- {name}, {concurrency} connections: " + ", ".join(f"{r:.1f}×" for r in ratios))
errors = sum(r["errors"] for r in runs)
if errors:
    sys.exit(f"{errors} requests failed")
PY

if [ -n "${BENCH_PROFILE:-}" ]; then
  if [ -n "${BENCH_PROFILE_KEEP:-}" ]; then
    mkdir -p "$BENCH_PROFILE_KEEP"
    cp "$work"/perf-*.data "$BENCH_PROFILE_KEEP"/
  fi
  for data in "$work"/perf-*.data; do
    echo "== $(basename "$data" .data): where the ingestion process spends its CPU (self time)"
    perf report -i "$data" --stdio --no-children -g none --sort dso,symbol --percent-limit 1 2>/dev/null \
      | grep -v '^#' | grep '%' | awk 'NR <= 40'
    echo "== by shared object"
    perf report -i "$data" --stdio --no-children -g none --sort dso 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 12'
    echo "== by crate or library"
    perf report -i "$data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null \
      | python3 load-tests/tools/perf_by_crate.py
  done
fi
