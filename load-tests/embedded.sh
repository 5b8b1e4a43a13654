#!/usr/bin/env bash
# The local default under load, side by side: `mlops up` as a newcomer gets it (Apache
# Kafka started by the launcher when Java is present), `mlops up` forced onto the
# in-process Tansu broker (MLOPS_BROKER=tansu, the fallback without Java), and `mlops up`
# pointed at an external Apache Kafka broker started by tests/kafka/kafka.sh. Each is fed
# BENCH_EVENTS events (default 200,000) over HTTP in 100-event batches into one dataset
# while a feature view reads it; then an independent consumer reads everything from
# offset 0. A prober times a metadata request and GET /readyz every second.
# Prints one JSON line per broker (see src/readback_load.rs for the fields).
#
#   load-tests/embedded.sh   (BENCH_EVENTS=200000 BENCH_CONCURRENCY=4 BENCH_BROKERS="default tansu external")
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
events=${BENCH_EVENTS:-200000}
concurrency=${BENCH_CONCURRENCY:-4}
brokers=${BENCH_BROKERS:-default tansu external}

cargo build --release --locked --bin mlops --bin readback-load
target=${CARGO_TARGET_DIR:-$root/target}/release

work=$(mktemp -d -t mlops-bench.XXXXXX)
platform=""
stop_platform() {
  if [ -n "$platform" ]; then
    kill "$platform" 2>/dev/null || true
    wait "$platform" 2>/dev/null || true
    platform=""
  fi
}
cleanup() {
  stop_platform
  tests/kafka/kafka.sh stop "$work/kafka" || true
  rm -rf "$work"
}
trap cleanup EXIT

export MLOPS_INGESTION_PORT=39280 MLOPS_REGISTRY_PORT=39281 MLOPS_SERVING_PORT=39282 \
  MLOPS_FEATURE_PORT=39283 MLOPS_TRAINING_PORT=39284 MLOPS_MONITORING_PORT=39285 \
  MLOPS_BROKER_PORT=39286 MLOPS_BROKER_CONTROLLER_PORT=39287

run() {
  local label=$1 bootstrap=$2 broker_pid=$3
  "$target/readback-load" --label "$label" --events "$events" --concurrency "$concurrency" \
    --ingestion http://127.0.0.1:39280 --feature http://127.0.0.1:39283 \
    --bootstrap "$bootstrap" --broker-pid "$broker_pid"
}

wait_ready() {
  for _ in $(seq 1 360); do
    if "$target/mlops" status > /dev/null 2>&1; then
      # The load generators present the admin token `mlops up` wrote.
      MLOPS_TOKEN=$(cat "$MLOPS_DATA_DIR/admin.token")
      export MLOPS_TOKEN
      return 0
    fi
    sleep 0.5
  done
  echo "embedded.sh: platform not ready; see $MLOPS_DATA_DIR/logs" >&2
  return 1
}

# The process doing the broker's work under `mlops up`: the JVM when the launcher runs
# Apache Kafka, else the `mlops broker` process itself (Tansu in-process).
local_broker_pid() {
  local wrapper jvm
  wrapper=$(pgrep -P "$platform" -f 'mlops broker' | head -n 1)
  jvm=$(pgrep -f "kafka.Kafka $MLOPS_DATA_DIR/" | head -n 1 || true)
  echo "${jvm:-$wrapper}"
}

for broker in $brokers; do
  case "$broker" in
    default|tansu)
      export MLOPS_DATA_DIR="$work/$broker"
      unset KAFKA_BOOTSTRAP_SERVERS
      if [ "$broker" = tansu ]; then export MLOPS_BROKER=tansu; else unset MLOPS_BROKER; fi
      "$target/mlops" up > "$work/up-$broker.log" 2>&1 &
      platform=$!
      wait_ready
      engine=$(sed -n 's/^mlops: broker engine \([a-z]*\).*/\1/p' "$work/up-$broker.log")
      run "$broker-$engine" 127.0.0.1:39286 "$(local_broker_pid)"
      stop_platform
      unset MLOPS_BROKER
      ;;
    external)
      tests/kafka/kafka.sh start "$work/kafka" 39292
      export MLOPS_DATA_DIR="$work/external" KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:39292
      "$target/mlops" up > "$work/up-external.log" 2>&1 &
      platform=$!
      wait_ready
      run external-kafka 127.0.0.1:39292 "$(cat "$work/kafka/kafka.pid")"
      stop_platform
      tests/kafka/kafka.sh stop "$work/kafka"
      unset KAFKA_BOOTSTRAP_SERVERS
      ;;
    *) echo "embedded.sh: unknown broker $broker (default, tansu, external)" >&2; exit 2 ;;
  esac
done
