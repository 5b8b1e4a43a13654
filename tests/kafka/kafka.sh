#!/usr/bin/env bash
# Runs a real single-node Apache Kafka broker (KRaft, loopback only) for the test suite.
#
#   tests/kafka/kafka.sh start <work-dir> <port>   provision jars if needed, format, start, wait
#   tests/kafka/kafka.sh start-secured <work-dir> <port> <password> [<jwks url>]
#                                                  the same, SASL_SSL only: SCRAM-SHA-512,
#                                                  and OAUTHBEARER when given a JWKS URL
#   tests/kafka/kafka.sh stop <work-dir>           stop the broker started in <work-dir>
#
# The jars come from Maven Central through infra/kafka/pom.xml and are kept in
# $MLOPS_CACHE_DIR (default ~/.cache/mlops) so a second run starts at once — the same
# place `mlops up` keeps them.
set -euo pipefail
java_properties=()

pom=$(cd "$(dirname "$0")/../../infra/kafka" && pwd)/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom")
cache=${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}
libs="$cache/kafka-$version/libs"

provision() {
  # The copy of the pom kept beside the jars says which pom they were resolved from.
  if [ ! -f "$libs/kafka_2.13-$version.jar" ] || ! cmp -s "$pom" "$libs/../pom.xml"; then
    echo "kafka.sh: fetching Apache Kafka $version from Maven Central into $libs" >&2
    # Into a fresh directory renamed at the end: an interrupted download is never taken
    # for a complete one.
    rm -rf "$libs.partial"
    mvn -q -B -f "$pom" dependency:copy-dependencies \
      -DincludeScope=runtime -DoutputDirectory="$libs.partial" >&2
    rm -rf "$libs"
    mv "$libs.partial" "$libs"
    cp "$pom" "$libs/../pom.xml"
  fi
}

# The settings both kinds of broker share; the listeners come first, from the caller.
common_properties() {
  local dir=$1 controller_port=$2
  cat <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller_port
controller.listener.names=CONTROLLER
log.dirs=$dir/data
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
}

start() {
  local dir=$1 port=$2 controller_port=$(( $2 + 1 ))
  provision
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  {
    cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=PLAINTEXT://127.0.0.1:$port
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
PROPS
    common_properties "$dir" "$controller_port"
  } > "$dir/server.properties"
  run "$dir" "$port"
}

# A broker that speaks only SASL_SSL with SCRAM-SHA-512: a CA and a certificate for
# 127.0.0.1 made here (openssl), the user `mlops` with password <password>. The CA is
# $dir/tls/ca.pem.
start_secured() {
  local dir=$1 port=$2 password=$3 jwks=${4:-} controller_port=$(( $2 + 1 ))
  provision
  mkdir -p "$dir/tls"
  dir=$(cd "$dir" && pwd)
  local tls=$dir/tls mechanisms=SCRAM-SHA-512
  [ -n "$jwks" ] && mechanisms=SCRAM-SHA-512,OAUTHBEARER
  if [ ! -f "$tls/keystore.pem" ]; then
    openssl req -x509 -newkey rsa:2048 -nodes -days 7 -subj /CN=mlops-test-ca \
      -keyout "$tls/ca.key" -out "$tls/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 \
      -keyout "$tls/broker.key" -out "$tls/broker.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' > "$tls/san.ext"
    openssl x509 -req -in "$tls/broker.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" \
      -CAcreateserial -days 7 -extfile "$tls/san.ext" -out "$tls/broker.pem" 2>/dev/null
    cat "$tls/broker.key" "$tls/broker.pem" > "$tls/keystore.pem"
  fi
  {
    cat <<PROPS
listeners=SASL_SSL://127.0.0.1:$port,CONTROLLER://127.0.0.1:$controller_port
advertised.listeners=SASL_SSL://127.0.0.1:$port
inter.broker.listener.name=SASL_SSL
listener.security.protocol.map=SASL_SSL:SASL_SSL,CONTROLLER:PLAINTEXT
sasl.enabled.mechanisms=$mechanisms
sasl.mechanism.inter.broker.protocol=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="broker" password="broker-secret";
ssl.keystore.type=PEM
ssl.keystore.location=$tls/keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$tls/ca.pem
PROPS
    if [ -n "$jwks" ]; then
      # OAUTHBEARER too: tokens of an OpenID Connect provider, checked against its JWKS.
      cat <<PROPS
listener.name.sasl_ssl.oauthbearer.sasl.jaas.config=org.apache.kafka.common.security.oauthbearer.OAuthBearerLoginModule required;
listener.name.sasl_ssl.oauthbearer.sasl.server.callback.handler.class=org.apache.kafka.common.security.oauthbearer.OAuthBearerValidatorCallbackHandler
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.jwks.endpoint.url=$jwks
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.expected.audience=mlops-kafka
listener.name.sasl_ssl.oauthbearer.sasl.oauthbearer.expected.issuer=${jwks%/jwks.json}
PROPS
    fi
    common_properties "$dir" "$controller_port"
  } > "$dir/server.properties"
  # Kafka fetches only from URLs it is told it may.
  [ -n "$jwks" ] && java_properties=(-Dorg.apache.kafka.sasl.oauthbearer.allowed.urls="$jwks")
  run "$dir" "$port" \
    --add-scram 'SCRAM-SHA-512=[name=broker,password=broker-secret]' \
    --add-scram "SCRAM-SHA-512=[name=mlops,password=$password]"
}

# Formats the storage on first use (extra arguments go to the format), starts the broker
# and waits for its listener.
run() {
  local dir=$1 port=$2
  shift 2
  local java_opts=(-Xms256m -Xmx768m -XX:+UseSerialGC "${java_properties[@]}" -cp "$libs/*")
  if [ ! -f "$dir/data/meta.properties" ]; then
    local cluster_id
    cluster_id=$(java "${java_opts[@]}" kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)
    java "${java_opts[@]}" kafka.tools.StorageTool format -t "$cluster_id" \
      -c "$dir/server.properties" "$@" > "$dir/format.log" 2>&1
  fi
  nohup java "${java_opts[@]}" kafka.Kafka "$dir/server.properties" > "$dir/kafka.log" 2>&1 &
  echo $! > "$dir/kafka.pid"
  # Ready when the broker listener accepts connections; give up after 120 s.
  for _ in $(seq 1 240); do
    if ! kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
      echo "kafka.sh: broker exited during start-up; last log lines:" >&2
      tail -n 40 "$dir/kafka.log" >&2
      exit 1
    fi
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "kafka.sh: Apache Kafka $version ready on 127.0.0.1:$port" >&2
      return 0
    fi
    sleep 0.5
  done
  echo "kafka.sh: broker not ready after 120 s" >&2
  stop "$dir"
  exit 1
}

stop() {
  local dir=$1
  [ -f "$dir/kafka.pid" ] || return 0
  local pid
  pid=$(cat "$dir/kafka.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$dir/kafka.pid"; return 0; }
    sleep 0.5
  done
  kill -9 "$pid" 2>/dev/null || true
  rm -f "$dir/kafka.pid"
}

case "${1:-}" in
  start) start "$2" "$3" ;;
  start-secured) start_secured "$2" "$3" "$4" "${5:-}" ;;
  stop) stop "$2" ;;
  provision) provision ;;
  *) echo "usage: $0 start <dir> <port> | start-secured <dir> <port> <password> | stop <dir> | provision" >&2; exit 2 ;;
esac
