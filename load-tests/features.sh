#!/usr/bin/env bash
# Side-by-side feature pipeline benchmark on this machine: the platform's view pipeline
# (polars, `feature-bench`) and the same view in pandas (peers/pandas_features.py), over
# the same events, one after the other, then the platform's online lookups in process.
# Prints one JSON line per run and the ratio; fails if the two outputs differ. Then the
# platform's cost per micro-batch against the batch size, once the window buffer is full.
#
#   load-tests/features.sh        (BENCH_EVENTS=1000000, BENCH_BATCH=10000 by default;
#                                  BENCH_CURVE="100 1000 10000", BENCH_CURVE_EVENTS=300000)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
events=${BENCH_EVENTS:-1000000}
batch=${BENCH_BATCH:-10000}
cache="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}"

cargo build --release --locked --bin feature-bench
target=${CARGO_TARGET_DIR:-$root/target}/release
venv="$cache/bench-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r load-tests/peers/requirements.txt

work=$(mktemp -d -t mlops-bench.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$target/feature-bench" --events "$events" --batch "$batch" \
  --write-events "$work/events.parquet" | tee "$work/platform.jsonl"
"$venv/bin/python" load-tests/peers/pandas_features.py "$work/events.parquet" --batch "$batch" \
  | tee "$work/peer.jsonl"

"$venv/bin/python" - "$work/platform.jsonl" "$work/peer.jsonl" <<'PY'
import json, math, sys
platform = next(r for r in map(json.loads, open(sys.argv[1])) if r["part"] == "pipeline")
peer = json.loads(open(sys.argv[2]).read())
a, b = platform["checksum"], peer["checksum"]
for key in a:
    same = a[key] == b[key] if isinstance(a[key], int) else math.isclose(a[key], b[key], rel_tol=1e-9)
    if not same:
        sys.exit(f"outputs differ on {key}: platform {a[key]}, pandas {b[key]}")
print(json.dumps({
    "same_output": True,
    "rows_per_s_ratio": round(platform["events_per_s"] / peer["events_per_s"], 2),
    "batch_p99_ratio": round(peer["batch_ms"]["p99"] / platform["batch_ms"]["p99"], 2),
    "cpu_per_event_ratio": round(peer["cpu_seconds_per_1000_events"] / platform["cpu_seconds_per_1000_events"], 2),
}))
PY

# The cost of a micro-batch against its size, with the buffer full (the steady part of the
# stream: after the first 70 min of event time, the window plus the lateness).
for size in ${BENCH_CURVE:-100 1000 10000}; do
  "$target/feature-bench" --events "${BENCH_CURVE_EVENTS:-300000}" --batch "$size" --lookups 0
done | tee "$work/curve.jsonl"
"$venv/bin/python" - "$work/curve.jsonl" <<'PY'
import json, sys
print("| batch size | batches (steady) | ms per batch p50 / p99 | CPU µs per event |")
print("|---:|---:|---|---:|")
for run in map(json.loads, open(sys.argv[1])):
    s = run["steady"]
    print(f"| {run['batch_size']:,} | {s['batches']:,} | {s['batch_ms_p50']:.1f} / {s['batch_ms_p99']:.1f} | {s['cpu_us_per_event']:.1f} |")
PY
