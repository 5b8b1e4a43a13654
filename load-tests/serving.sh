#!/usr/bin/env bash
# Side-by-side model serving on this machine: the platform's serving (`mlops up`, release
# build, models trained through its own APIs) against Seldon MLServer with the same models
# in scikit-learn, over the Open Inference Protocol v2 with the same request bodies: logistic
# regression and random forest, 1 and 32 rows per request, at several concurrencies. For
# each run: requests/s, latency percentiles, and the CPU seconds of the server process
# alone (MLServer: with its worker processes) per 1,000 requests, from /proc/<pid>/stat.
#
# Then 32-row requests at a fixed rate both sustain (BENCH_RATE), where every row is logged.
# The platform's share of rows logged is reported: when its log cannot keep up with the
# broker, serving samples it (and counts the rest) rather than slow the answers.
#
#   load-tests/serving.sh     (BENCH_SECONDS=10, BENCH_CONCURRENCY="1 16", BENCH_RATE=300)
#   BENCH_RATE_ONLY=1         only the fixed-rate runs (where every row is logged)
#   BENCH_PROFILE=1           a CPU profile (perf, self time by function) of the platform's
#                             serving process during its fixed-rate runs, after the table
# Needs the default ports (8080-8085, 9092) and 18080-18082 free.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
seconds=${BENCH_SECONDS:-10}
concurrencies=${BENCH_CONCURRENCY:-1 16}
rate=${BENCH_RATE:-300}
warmup=3
port=18080
cache="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}"

cargo build --release --locked --bin mlops --bin infer-load
target=${CARGO_TARGET_DIR:-$root/target}/release
venv="$cache/serving-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r load-tests/peers/serving-requirements.txt

work=$(mktemp -d -t mlops-serving.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

MLOPS_DATA_DIR="$work/platform" MLOPS_BROKER=${MLOPS_BROKER:-tansu} "$target/mlops" up > "$work/up.log" 2>&1 &
launcher=$!
pids+=("$launcher")
# The clients present the admin token `mlops up` writes on its first start.
for _ in $(seq 600); do [ -s "$work/platform/admin.token" ] && break; sleep 0.1; done
MLOPS_TOKEN=$(cat "$work/platform/admin.token")
export MLOPS_TOKEN
"$venv/bin/python" load-tests/peers/serving_setup.py "$work" "$port"
serving=$(pgrep -P "$launcher" -f "service serving")

(cd "$work/mlserver" && exec "$venv/bin/mlserver" start . > "$work/mlserver.log" 2>&1) &
pids+=("$!")
for attempt in $(seq 240); do
  curl -sf "http://127.0.0.1:$port/v2/models/bench_rf/ready" > /dev/null && break
  [ "$attempt" -lt 240 ] || { tail -30 "$work/mlserver.log"; echo "MLServer did not load the models" >&2; exit 1; }
  sleep 0.5
done
mlserver=$(pgrep -f "mlserver start" | head -1)

# A process and all its descendants.
tree() {
  local child
  echo "$1"
  for child in $(pgrep -P "$1"); do tree "$child"; done
}
# CPU ticks (user + system, 100 a second) of a process and all its descendants.
cpu() {
  local total=0 pid
  for pid in $(tree "$1"); do
    [ -r "/proc/$pid/stat" ] || continue
    total=$((total + $(awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$pid/stat")))
  done
  echo "$total"
}

# Prediction-log counters of the platform's serving process.
log_counter() {
  curl -s http://127.0.0.1:8082/metrics | awk -v k="mlops_serving_predictions_$1_total" '$1==k {print $2}'
}

# Waits (up to two minutes) until the monitor has read every logged prediction, so that
# the platform's background work from one run does not take CPU from the next.
settle() {
  local monitored
  for _ in $(seq 120); do
    monitored=$(curl -s http://127.0.0.1:8085/metrics \
      | awk '$1 ~ /^mlops_monitoring_predictions_total/ {s += $2} END {print s + 0}')
    [ "${monitored%.*}" -ge "$(log_counter logged)" ] && return
    sleep 1
  done
}

# One measured run: side model rows concurrency [rate]. Prints its JSON line.
measure() {
  local side=$1 model=$2 rows=$3 concurrency=$4 rate=${5:-} url pid
  settle
  if [ "$side" = platform ]; then url="http://127.0.0.1:8082/v2/models/$model/infer"; pid=$serving
  else url="http://127.0.0.1:$port/v2/models/$model/infer"; pid=$mlserver; fi
  "$target/infer-load" --url "$url" --body "$work/body-$rows.json" --rows "$rows" \
    --concurrency "$concurrency" --duration "$seconds" --warmup "$warmup" \
    ${rate:+--rate "$rate"} --label "$side $model" > "$work/run.json" &
  local load=$!
  sleep "$warmup"
  local before logged_before dropped_before after perf_pid=""
  if [ -n "${BENCH_PROFILE:-}" ] && [ -n "$rate" ] && [ "$side" = platform ]; then
    perf record -F 999 -p "$pid" -o "$work/perf-$model.data" -- sleep "$seconds" > /dev/null 2>&1 &
    perf_pid=$!
  fi
  before=$(cpu "$pid"); logged_before=$(log_counter logged); dropped_before=$(log_counter dropped)
  sleep "$seconds"
  after=$(cpu "$pid")
  if [ -n "$perf_pid" ]; then wait "$perf_pid" || true; fi
  local logged=$(( $(log_counter logged) - logged_before )) dropped=$(( $(log_counter dropped) - dropped_before ))
  wait "$load"
  "$venv/bin/python" - "$work/run.json" "$before" "$after" "$model" "$side" "$logged" "$dropped" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
cpu = (int(sys.argv[3]) - int(sys.argv[2])) / 100
logged, dropped = int(sys.argv[6]), int(sys.argv[7])
run.update(model=sys.argv[4], server=sys.argv[5], server_cpu_seconds=cpu,
           cpu_seconds_per_1000_requests=round(1000 * cpu / max(run["requests"], 1), 3))
if sys.argv[5] == "platform":
    run["rows_logged_share"] = round(logged / max(logged + dropped, 1), 3)
print(json.dumps(run))
PY
}

{
  for model in bench_lr bench_rf; do
    [ -z "${BENCH_RATE_ONLY:-}" ] || break
    for rows in 1 32; do
      for concurrency in $concurrencies; do
        for side in platform mlserver; do measure "$side" "$model" "$rows" "$concurrency"; done
      done
    done
  done
  # The same work below saturation: 32-row requests at a fixed rate both servers sustain.
  for model in bench_lr bench_rf; do
    for side in platform mlserver; do measure "$side" "$model" 32 16 "$rate"; done
  done
} | tee "$work/results.jsonl"

"$venv/bin/python" - "$work/results.jsonl" <<'PY'
import json, sys
runs = [json.loads(line) for line in open(sys.argv[1])]
by = {(r["server"], r["model"], r["rows_per_request"], r["concurrency"], r["offered_rate"]): r for r in runs}
print("| model | rows/request | concurrency | offered req/s | platform req/s | MLServer req/s | throughput ratio | platform CPU s / 1k req | MLServer CPU s / 1k req | CPU ratio | platform p50 / p99 ms | MLServer p50 / p99 ms | rows logged |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|")
for (server, model, rows, concurrency, rate), p in sorted(by.items(), key=lambda kv: (kv[0][4] is not None, kv[0][1:4])):
    if server != "platform":
        continue
    m = by[("mlserver", model, rows, concurrency, rate)]
    print(f"| {model} | {rows} | {concurrency} | {rate or 'max'} | {p['requests_per_second']:,.0f} | {m['requests_per_second']:,.0f} | "
          f"**{p['requests_per_second'] / max(m['requests_per_second'], 1):.1f}×** | {p['cpu_seconds_per_1000_requests']} | "
          f"{m['cpu_seconds_per_1000_requests']} | **{m['cpu_seconds_per_1000_requests'] / max(p['cpu_seconds_per_1000_requests'], 1e-9):.1f}×** | "
          f"{p['p50_ms']} / {p['p99_ms']} | {m['p50_ms']} / {m['p99_ms']} | {p['rows_logged_share']:.0%} |")
errors = sum(r["errors"] for r in runs)
if errors:
    sys.exit(f"{errors} requests failed")
PY

if [ -n "${BENCH_PROFILE:-}" ]; then
  for data in "$work"/perf-*.data; do
    echo "== $(basename "$data" .data): the serving process at $rate requests/s, by dso"
    perf report -i "$data" --stdio --no-children -g none --sort dso 2>/dev/null | grep -v '^#' | grep '%' | awk 'NR <= 12'
    echo "== by function (>= 0.7 %)"
    perf report -i "$data" --stdio --no-children -g none --sort dso,symbol --percent-limit 0.7 2>/dev/null \
      | grep -v '^#' | grep '%' | awk 'NR <= 60'
    echo "== by crate or library"
    perf report -i "$data" --stdio --no-children -g none --sort dso,symbol 2>/dev/null \
      | python3 load-tests/tools/perf_by_crate.py
  done
fi
