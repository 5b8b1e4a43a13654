"""Writes straight to a raw topic with Confluent's own Python producer, the way a producer
that skips HTTP does: Avro through the Schema Registry, then garbage, then Avro again.
Called by tests/ingestion.rs:

    produce_avro.py <bootstrap> <registry-url> <topic> <schema-json> <record-json> <record-json>
"""

import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry_config(url):
    """The Schema Registry client's settings: the platform's token (MLOPS_TOKEN) as HTTP
    basic auth with the user `token`, the way Confluent's clients authenticate."""
    import os
    config = {"url": url}
    if os.environ.get("MLOPS_TOKEN"):
        config["basic.auth.user.info"] = "token:" + os.environ["MLOPS_TOKEN"]
    return config


bootstrap, registry, topic, schema, first, last = sys.argv[1:7]
serializer = AvroSerializer(SchemaRegistryClient(registry_config(registry)), schema,
                            conf={"auto.register.schemas": False, "use.latest.version": True})
ctx = SerializationContext(topic, MessageField.VALUE)
producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
failures = []


def delivered(err, msg):
    if err is not None:
        failures.append(str(err))


producer.produce(topic, key=b"py-1", value=serializer(json.loads(first), ctx), on_delivery=delivered)
producer.produce(topic, key=b"py-2", value=b"garbage, not avro", on_delivery=delivered)
producer.produce(topic, key=b"py-3", value=serializer(json.loads(last), ctx), on_delivery=delivered)
left = producer.flush(30)
if left or failures:
    raise SystemExit(f"not delivered: {left} left, failures {failures}")
print("ok")
