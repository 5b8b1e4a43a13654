#!/usr/bin/env bash
# The whole test suite, as CI runs it: unit tests, and the integration tests against both
# brokers — the embedded Tansu broker (started in-process by each test) and a real
# Apache Kafka broker (KRaft, loopback) provisioned here from Maven Central — and against
# both databases — SQLite files and a throwaway PostgreSQL server started here.
# Extra arguments go to `cargo test` (e.g. tests/run.sh -p mlops-kafka).
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
# What a fresh machine lacks (Debian packages), installed first.
tests/setup.sh

# Free loopback ports: Kafka's broker and KRaft controller (adjacent), the same for the
# SASL_SSL broker, then PostgreSQL and the test identity provider.
read -r port secured_port pg_port idp_port < <(python3 - <<'PY'
import socket
def free(*ports):
    try:
        socks = [socket.socket() for _ in ports]
        for s, p in zip(socks, ports): s.bind(("127.0.0.1", p))
        return True
    except OSError:
        return False
    finally:
        for s in socks: s.close()
kafka = next(b for b in range(29092, 39092, 2) if free(b, b + 1))
secured = next(b for b in range(kafka + 2, 39092, 2) if free(b, b + 1))
pg = next(p for p in range(25432, 26432) if free(p))
idp = next(p for p in range(pg + 1, 26432) if free(p))
print(kafka, secured, pg, idp)
PY
)

work=$(mktemp -d -t mlops-tests.XXXXXX)
chmod 755 "$work"
cleanup() {
  tests/kafka/kafka.sh stop "$work/kafka" || true
  tests/kafka/kafka.sh stop "$work/kafka-secured" || true
  if [ -n "${idp_pid:-}" ]; then kill "$idp_pid" 2>/dev/null || true; fi
  tests/postgres/postgres.sh stop "$work/postgres" || true
  rm -rf "$work"
}
trap cleanup EXIT

# Confluent's Python client, the independent peer of the interoperability tests.
venv="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r tests/python/requirements.txt
export MLOPS_TEST_PYTHON="$venv/bin/python"

# The Go programs some tests run (a real Jaeger, promtool, helm), built from the Go module
# proxy into the cache once, beside the Rust build. A failed build fails the suite, loudly.
export MLOPS_CACHE_DIR="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}"
tests/tools/build.sh > "$work/tools.env" 2> "$work/tools.log" &
tools=$!
# Build first so the broker does not sit idle through a cold compile.
cargo test --workspace --locked --no-run "$@"
if ! wait "$tools"; then
  cat "$work/tools.log" >&2
  echo "run.sh: building the Go test tools failed (see above)" >&2
  exit 1
fi
export MLOPS_TEST_PROMTOOL=$(sed -n 's/^PROMTOOL=//p' "$work/tools.env")
export MLOPS_TEST_HELM=$(sed -n 's/^HELM=//p' "$work/tools.env")
tests/kafka/kafka.sh start "$work/kafka" "$port"
export MLOPS_TEST_KAFKA_BOOTSTRAP="127.0.0.1:$port"
# A second broker that speaks only SASL_SSL (SCRAM-SHA-512, and OAUTHBEARER with tokens of
# a small OpenID Connect provider started here), for the client's secured paths.
secret() { python3 -c 'import secrets; print(secrets.token_hex(16))'; }
MLOPS_TEST_KAFKA_SECURED_PASSWORD=$(secret)
MLOPS_TEST_OIDC_CLIENT_SECRET=$(secret)
export MLOPS_TEST_KAFKA_SECURED_PASSWORD MLOPS_TEST_OIDC_CLIENT_SECRET
export MLOPS_TEST_OIDC_CLIENT_ID=mlops-tests
export MLOPS_TEST_OIDC_TOKEN_URL="http://127.0.0.1:$idp_port/token"
"$venv/bin/python" tests/kafka/idp.py "$idp_port" "$MLOPS_TEST_OIDC_CLIENT_ID" \
  "$MLOPS_TEST_OIDC_CLIENT_SECRET" > "$work/idp.log" 2>&1 &
idp_pid=$!
until python3 -c "import urllib.request as u; u.urlopen('http://127.0.0.1:$idp_port/jwks.json')" \
  > /dev/null 2>&1; do
  kill -0 "$idp_pid" 2>/dev/null || { cat "$work/idp.log" >&2; exit 1; }
  sleep 0.2
done
tests/kafka/kafka.sh start-secured "$work/kafka-secured" "$secured_port" \
  "$MLOPS_TEST_KAFKA_SECURED_PASSWORD" "http://127.0.0.1:$idp_port/jwks.json"
export MLOPS_TEST_KAFKA_SECURED_BOOTSTRAP="127.0.0.1:$secured_port"
export MLOPS_TEST_KAFKA_SECURED_CA="$work/kafka-secured/tls/ca.pem"
MLOPS_TEST_POSTGRES_URL=$(tests/postgres/postgres.sh start "$work/postgres" "$pg_port")
export MLOPS_TEST_POSTGRES_URL
# A hung test fails its own binary after 20 minutes instead of holding CI to its limit.
host=$(rustc -vV | sed -n 's/^host: //p' | tr 'a-z-' 'A-Z_')
export "CARGO_TARGET_${host}_RUNNER=timeout --kill-after=30 1200"
status=0
# Every binary runs even after one fails: one run shows every failure, not the first.
cargo test --workspace --locked --no-fail-fast "$@" 2>&1 | tee "$work/test.log" || status=$?
# One closing line for the whole suite, summed over every test binary.
awk '/^test result:/ { passed += $4; failed += $6 }
     END { printf "%d passed, %d failed\n", passed, failed }' "$work/test.log"
exit "$status"
