"""The peer of the ingestion benchmark: the same HTTP contract as the platform's ingestion
service (POST /v1/datasets, POST /v1/datasets/{name}/events with one object or an array),
doing the same work per event — Avro validation against the dataset schema plus its
min/max rules, Confluent framing with the Schema Registry id, keyed produce with
acks=all and idempotence — written the way a Python team would: FastAPI + aiokafka +
fastavro. Workers are stateless: a dataset's schema is fetched from the registry on first use.

    KAFKA_BOOTSTRAP_SERVERS=... SCHEMA_REGISTRY_URL=... uvicorn fastapi_ingest:app --workers 2
"""

import asyncio
import io
import json
import os

import fastavro
import httpx
from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from fastavro.validation import validate

BOOTSTRAP = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
LINGER_MS = int(os.environ.get("LINGER_MS", "5"))
REGISTRY = os.environ["SCHEMA_REGISTRY_URL"].rstrip("/")
# The platform's registry asks for a token, as basic auth `token:<token>` (what Confluent's
# clients send).
REGISTRY_AUTH = ("token", os.environ["MLOPS_TOKEN"]) if os.environ.get("MLOPS_TOKEN") else None
SR_JSON = "application/vnd.schemaregistry.v1+json"

app = FastAPI()
state = {"producer": None, "http": None, "datasets": {}}


@app.on_event("startup")
async def startup():
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", enable_idempotence=True, linger_ms=LINGER_MS)
    await producer.start()
    state["producer"] = producer
    state["http"] = httpx.AsyncClient(auth=REGISTRY_AUTH)


@app.on_event("shutdown")
async def shutdown():
    await state["producer"].stop()
    await state["http"].aclose()


async def load(name):
    """Schema id, parsed schema and rules of a dataset, from the registry and the spec."""
    if name in state["datasets"]:
        return state["datasets"][name]
    subject = f"raw.{name}-value"
    answer = await state["http"].get(f"{REGISTRY}/subjects/{subject}/versions/latest")
    if answer.status_code != 200:
        return None
    latest = answer.json()
    schema = json.loads(latest["schema"])
    rules = schema.get("x-rules", {})
    dataset = (latest["id"], fastavro.parse_schema(schema), rules, f"raw.{name}")
    state["datasets"][name] = dataset
    return dataset


@app.post("/v1/datasets", status_code=201)
async def declare(request: Request):
    spec = await request.json()
    name = spec["name"]
    # Rules travel inside the schema as a custom attribute, so stateless workers find them.
    schema = dict(spec["schema"], **{"x-rules": spec.get("rules", {})})
    subject = f"raw.{name}-value"
    answer = await state["http"].post(f"{REGISTRY}/subjects/{subject}/versions",
                                      content=json.dumps({"schema": json.dumps(schema)}),
                                      headers={"content-type": SR_JSON})
    if answer.status_code != 200:
        return JSONResponse(status_code=answer.status_code, content=answer.json())
    admin = AIOKafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(f"raw.{name}", spec.get("partitions", 3), 1)])
    except Exception:  # already exists
        pass
    finally:
        await admin.close()
    state["datasets"].pop(name, None)
    return {"name": name, "topic": f"raw.{name}", "schema_id": answer.json()["id"]}


def check_rules(record, rules):
    errors = []
    for field, rule in rules.items():
        value = record.get(field)
        if isinstance(value, (int, float)):
            if "min" in rule and value < rule["min"]:
                errors.append({"field": field, "reason": f"{value} is below the minimum {rule['min']}"})
            if "max" in rule and value > rule["max"]:
                errors.append({"field": field, "reason": f"{value} is above the maximum {rule['max']}"})
    return errors


@app.post("/v1/datasets/{name}/events")
async def events(name: str, request: Request):
    dataset = await load(name)
    if dataset is None:
        return JSONResponse(status_code=404, content={"error": {"code": "unknown_dataset"}})
    schema_id, schema, rules, topic = dataset
    body = await request.json()
    records = body if isinstance(body, list) else [body]
    header = b"\x00" + schema_id.to_bytes(4, "big")
    results, sends = [], []
    for index, record in enumerate(records):
        if not validate(record, schema, raise_errors=False):
            results.append({"index": index, "status": "rejected", "errors": [{"field": "", "reason": "does not match the schema"}]})
            continue
        errors = check_rules(record, rules)
        if errors:
            results.append({"index": index, "status": "rejected", "errors": errors})
            continue
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, schema, record)
        key = str(record.get("customer_id", "")).encode()
        future = await state["producer"].send(topic, header + buffer.getvalue(), key=key)
        sends.append((index, future))
        results.append(None)
    acknowledged = await asyncio.gather(*(f for _, f in sends))
    slots = iter(i for i, r in enumerate(results) if r is None)
    for (index, _), metadata in zip(sends, acknowledged):
        results[next(slots)] = {"index": index, "status": "accepted",
                                "partition": metadata.partition, "offset": metadata.offset}
    accepted = sum(1 for r in results if r["status"] == "accepted")
    return {"accepted": accepted, "rejected": len(results) - accepted, "results": results}
