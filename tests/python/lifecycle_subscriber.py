# A service following one model's updates on models.lifecycle: the README's example.
# Usage: lifecycle_subscriber.py BOOTSTRAP SCHEMA_REGISTRY_URL GROUP MODEL LAST_SEQUENCE
import json, sys
from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer

bootstrap, registry, group, model, last = *sys.argv[1:5], int(sys.argv[5])
consumer = DeserializingConsumer({
    "bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
    "value.deserializer": AvroDeserializer(SchemaRegistryClient({"url": registry})),
})
consumer.subscribe(["models.lifecycle"])
applied = 0  # highest sequence applied: an event delivered twice changes nothing
while applied < last:
    message = consumer.poll(1.0)
    if message is None or message.error() or message.value()["model_name"] != model:
        continue
    event = message.value()
    if event["sequence"] <= applied:
        continue
    applied = event["sequence"]
    # Here a service would load (production, canary) or unload (archived) the version.
    print(json.dumps({k: event[k] for k in ("version", "stage", "sequence", "canary_percent",
                                            "artifact_uri", "artifact_sha256")}), flush=True)
consumer.close()
