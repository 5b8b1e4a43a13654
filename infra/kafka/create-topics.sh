#!/usr/bin/env bash
# The platform's fixed topics, created before the services start (the broker does not
# create topics on first use). Per-dataset, per-view and per-model topics (raw.<dataset>,
# features.<view>, predictions.<model>, and their .dlq) are created by the services as
# datasets, views and models are declared. Partitions are the unit of scale-out: a
# consumer group spreads over at most as many members as its topic has partitions.
set -euo pipefail
bootstrap=${KAFKA_BOOTSTRAP_SERVERS:-kafka:9092}
replicas=${REPLICATION_FACTOR:-1}
topics=/opt/kafka/bin/kafka-topics.sh
create() { # <topic> <partitions> [config...]
  local topic=$1 partitions=$2
  shift 2
  local configs=()
  for c in "$@"; do configs+=(--config "$c"); done
  "$topics" --bootstrap-server "$bootstrap" --create --if-not-exists --topic "$topic" \
    --partitions "$partitions" --replication-factor "$replicas" "${configs[@]}"
}
until "$topics" --bootstrap-server "$bootstrap" --list >/dev/null 2>&1; do sleep 1; done
create labels 3
create training.requests 3
create training.runs 1
create models.lifecycle 3
create monitoring.drift 3
create monitoring.canary-decisions 3
# The audit trail: one partition per writing service, kept forever.
create audit.log 8 retention.ms=-1 retention.bytes=-1
echo "topics ready"
