"""Reads a topic with Confluent's own Python consumer and AvroDeserializer, resolving
schemas through the given Schema Registry. Called by tests/ingestion.rs:

    consume_avro.py <bootstrap> <registry-url> <topic> <expected-count> <timeout-seconds>

Prints {"records": [...]}: the first <expected-count> values, timestamps as epoch
milliseconds. (The Rust side checks the topic holds no more than that.)
"""

import datetime
import json
import sys
import time
import uuid

from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer


def registry_config(url):
    """The Schema Registry client's settings: the platform's token (MLOPS_TOKEN) as HTTP
    basic auth with the user `token`, the way Confluent's clients authenticate."""
    import os
    config = {"url": url}
    if os.environ.get("MLOPS_TOKEN"):
        config["basic.auth.user.info"] = "token:" + os.environ["MLOPS_TOKEN"]
    return config


bootstrap, registry, topic, expected, timeout = sys.argv[1:6]
expected, timeout = int(expected), float(timeout)


def plain(value):
    if isinstance(value, datetime.datetime):
        return int(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


consumer = DeserializingConsumer({
    "bootstrap.servers": bootstrap,
    "group.id": f"python-{uuid.uuid4()}",
    "auto.offset.reset": "earliest",
    "enable.auto.commit": False,
    "session.timeout.ms": 6000,
    "value.deserializer": AvroDeserializer(SchemaRegistryClient(registry_config(registry))),
})
consumer.subscribe([topic])
records = []
deadline = time.monotonic() + timeout
while len(records) < expected and time.monotonic() < deadline:
    message = consumer.poll(0.5)
    if message is None:
        continue
    if message.error():
        raise SystemExit(f"consume error: {message.error()}")
    records.append(plain(message.value()))
consumer.close()
print(json.dumps({"records": records}))
