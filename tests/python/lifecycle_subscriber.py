# A service following one model's updates on models.lifecycle: the README's example.
# Usage: lifecycle_subscriber.py BOOTSTRAP SCHEMA_REGISTRY_URL GROUP MODEL LAST_SEQUENCE
import json, sys
from confluent_kafka import Consumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import MessageField, SerializationContext


def registry_config(url):
    """The Schema Registry client's settings: the platform's token (MLOPS_TOKEN) as HTTP
    basic auth with the user `token`, the way Confluent's clients authenticate."""
    import os
    config = {"url": url}
    if os.environ.get("MLOPS_TOKEN"):
        config["basic.auth.user.info"] = "token:" + os.environ["MLOPS_TOKEN"]
    return config


bootstrap, registry, group, model, last = *sys.argv[1:5], int(sys.argv[5])
decode = AvroDeserializer(SchemaRegistryClient(registry_config(registry)))
consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group,
                     "auto.offset.reset": "earliest"})
consumer.subscribe(["models.lifecycle"])
applied = 0  # highest sequence applied: an event delivered twice changes nothing
while applied < last:
    message = consumer.poll(1.0)
    if message is None or message.error() or message.key() != model.encode():
        continue  # keyed by model name: other models' events are not decoded
    event = decode(message.value(), SerializationContext("models.lifecycle", MessageField.VALUE))
    if event["sequence"] <= applied:
        continue
    applied = event["sequence"]
    # Here a service would load (production, canary) or unload (archived) the version.
    print(json.dumps({k: event[k] for k in ("version", "stage", "sequence", "canary_percent",
                                            "artifact_uri", "artifact_sha256")}), flush=True)
consumer.close()
