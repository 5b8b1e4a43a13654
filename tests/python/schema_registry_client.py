"""Confluent's own Python Schema Registry client and Avro serde, unmodified, against the
registry service. Called by tests/schema_registry.rs:

    schema_registry_client.py <registry-url> <subject-prefix> <schema-file> <topic> <hex-bytes>

<hex-bytes> is a record our Rust codec wrote to <topic>; this script decodes it with
Confluent's AvroDeserializer, writes one record of its own with AvroSerializer, and prints
a JSON report for the Rust side to check.
"""

import json
import sys

from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext


def registry_config(url):
    """The Schema Registry client's settings: the platform's token (MLOPS_TOKEN) as HTTP
    basic auth with the user `token`, the way Confluent's clients authenticate."""
    import os
    config = {"url": url}
    if os.environ.get("MLOPS_TOKEN"):
        config["basic.auth.user.info"] = "token:" + os.environ["MLOPS_TOKEN"]
    return config


url, prefix, schema_file, topic, rust_hex = sys.argv[1:6]
client = SchemaRegistryClient(registry_config(url))
report = {}

v1 = '{"type":"record","name":"Order","namespace":"py","fields":[{"name":"id","type":"string"}]}'
v2_ok = ('{"type":"record","name":"Order","namespace":"py","fields":[{"name":"id","type":"string"},'
         '{"name":"qty","type":"int","default":1}]}')
v2_bad = ('{"type":"record","name":"Order","namespace":"py","fields":[{"name":"id","type":"string"},'
          '{"name":"qty","type":"int"}]}')
subject = f"{prefix}-value"

first = client.register_schema(subject, Schema(v1, "AVRO"))
again = client.register_schema(subject, Schema(v1, "AVRO"))
report["register_idempotent"] = first == again
latest = client.get_latest_version(subject)
report["latest_version"] = latest.version
report["latest_id_matches"] = latest.schema_id == first
report["lookup_version"] = client.lookup_schema(subject, Schema(v1, "AVRO")).version
report["schema_by_id_name"] = json.loads(client.get_schema(first).schema_str)["name"]
report["compatible_ok"] = client.test_compatibility(subject, Schema(v2_ok, "AVRO"))
report["compatible_bad"] = client.test_compatibility(subject, Schema(v2_bad, "AVRO"))
try:
    client.register_schema(subject, Schema(v2_bad, "AVRO"))
    report["incompatible_refused_code"] = None
except SchemaRegistryError as e:
    report["incompatible_refused_code"] = e.error_code
client.set_compatibility(subject_name=subject, level="NONE")
report["compatibility_after_set"] = client.get_compatibility(subject)
report["subjects_include"] = subject in client.get_subjects()
try:
    client.get_version(subject, 99)
    report["missing_version_code"] = None
except SchemaRegistryError as e:
    report["missing_version_code"] = e.error_code

# Bytes written by the Rust codec, read by Confluent's deserializer.
deserializer = AvroDeserializer(client)
ctx = SerializationContext(topic, MessageField.VALUE)
decoded = deserializer(bytes.fromhex(rust_hex), ctx)
report["from_rust"] = decoded

# A record written by Confluent's serializer with the platform's schema file, for Rust to read.
with open(schema_file) as f:
    platform_schema = f.read()
serializer = AvroSerializer(client, platform_schema, conf={"auto.register.schemas": True})
record = dict(decoded)
record["request_id"] = "written-by-python"
record["reason"] = "new_data"
report["to_rust_hex"] = serializer(record, ctx).hex()

print(json.dumps(report, default=str))
