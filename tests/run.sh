#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit tests, and the integration tests against both
# brokers — the embedded Tansu broker (started in-process by each test) and a real
# Apache Kafka broker (KRaft, loopback) provisioned here from Maven Central.
# Extra arguments go to `cargo test` (e.g. tests/run.sh -p mlops-kafka).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Two adjacent free loopback ports: the broker and its KRaft controller.
port=$(python3 - <<'PY'
import socket
for base in range(29092, 39092, 2):
    try:
        socks = []
        for p in (base, base + 1):
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
        print(base); break
    except OSError:
        pass
PY
)

work=$(mktemp -d -t mlops-tests.XXXXXX)
cleanup() {
  tests/kafka/kafka.sh stop "$work/kafka" || true
  rm -rf "$work"
}
trap cleanup EXIT

# Build first so the broker does not sit idle through a cold compile.
cargo test --workspace --locked --no-run "$@"
tests/kafka/kafka.sh start "$work/kafka" "$port"
export MLOPS_TEST_KAFKA_BOOTSTRAP="127.0.0.1:$port"
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$work/test.log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "%d passed, %d failed\n", passed, failed }' "$work/test.log"
exit "$status"
