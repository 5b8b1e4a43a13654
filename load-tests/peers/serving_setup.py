"""Sets up both sides of the serving benchmark.

On the platform (through its public APIs): a dataset of payments with four numeric
features, a feature view, labelled events, and two models trained and put in production —
`bench_lr` (logistic regression) and `bench_rf` (random forest, 50 trees of depth 8).
For MLServer: the same two models in scikit-learn (a StandardScaler + LogisticRegression
pipeline, a RandomForestClassifier of 50 trees of depth 8) fitted on the platform's own
training snapshot, saved for `mlserver_sklearn`, with MLServer's settings. Then the
request bodies: one OIP v2 tensor of shape [rows, 4] in the order the platform's metadata
lists its inputs, the same body for both servers (each ignores what it does not use;
MLServer is asked for `predict_proba`, which the platform always returns).

    serving_setup.py OUT_DIR MLSERVER_HTTP_PORT
"""

import io
import json
import os
import random
import sys
import time
import urllib.request

import joblib
import numpy as np
import pandas as pd
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

INGESTION, FEATURE, TRAINING, SERVING = (
    "http://127.0.0.1:8080", "http://127.0.0.1:8083", "http://127.0.0.1:8084", "http://127.0.0.1:8082")
FEATURES = ["f1", "f2", "f3", "f4"]
ROWS = 4000
T0 = 1_795_687_200_000


def call(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if os.environ.get("MLOPS_TOKEN"):
        headers["authorization"] = "Bearer " + os.environ["MLOPS_TOKEN"]
    request = urllib.request.Request(url, data=data, headers=headers)
    with urllib.request.urlopen(request, timeout=120) as response:
        raw = response.read()
    return json.loads(raw) if raw[:1] in (b"{", b"[") else raw


def wait(what, probe, limit=300):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            found = probe()
            if found:
                return found
        except Exception:  # not there yet
            pass
        time.sleep(0.5)
    sys.exit(f"serving benchmark setup: {what} not within {limit} s")


def platform():
    call(f"{INGESTION}/v1/datasets", {
        "name": "bench_payments", "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
        "partitions": 2,
        "schema": {"type": "record", "name": "Payment", "namespace": "bench", "fields": [
            {"name": "txn_id", "type": "string"}, {"name": "customer_id", "type": "string"},
            *({"name": f, "type": "double"} for f in FEATURES),
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}})
    call(f"{FEATURE}/v1/feature-views", {
        "name": "bench_view", "source": "bench_payments", "entity_key": "customer_id",
        "event_time": "ts", "features": [{"name": f} for f in FEATURES]})
    rng = random.Random(7)
    events, labels = [], []
    for i in range(ROWS):
        x = [rng.uniform(0, 1) for _ in FEATURES]
        truth = x[0] + 0.5 * x[1] - x[2] + rng.gauss(0, 0.1) > 0.3
        events.append({"txn_id": f"t-{i}", "customer_id": f"c-{i}", "ts": T0 + i * 1000,
                       **dict(zip(FEATURES, x))})
        labels.append({"entity_id": f"c-{i}", "label": truth, "event_time": T0 + i * 1000 + 1,
                       "label_id": f"l-{i}"})
    for start in range(0, ROWS, 500):
        call(f"{INGESTION}/v1/datasets/bench_payments/events", events[start:start + 500])
        call(f"{INGESTION}/v1/datasets/bench_payments/labels", labels[start:start + 500])
    wait("the training set", lambda: call(f"{FEATURE}/v1/training-sets", {"view": "bench_view"})["rows"] == ROWS)
    specs = {
        "bench_lr": {"logistic_regression": {"alpha": [1.0]}},
        "bench_rf": {"random_forest": {"n_trees": [50], "max_depth": [8], "seed": [7]}},
    }
    snapshots = {}
    for name, algorithms in specs.items():
        call(f"{TRAINING}/v1/models/specs", {
            "name": name, "view": "bench_view", "task": "binary_classification",
            "primary_metric": "accuracy", "algorithms": algorithms})
        run = call(f"{TRAINING}/v1/training-runs", {"model": name})
        done = wait(f"training {name}", lambda: (lambda r: r if r["status"] not in ("pending", "running") else None)(
            call(f"{TRAINING}/v1/training-runs/{run['id']}")))
        if done["status"] != "succeeded":
            sys.exit(f"training {name} failed: {done}")
        snapshots[name] = done["snapshot_id"]
        wait(f"{name} served", lambda: call(f"{SERVING}/v2/models/{name}/ready") is not None)
    return snapshots


def mlserver(snapshot, out, port):
    data = pd.read_parquet(io.BytesIO(call(f"{FEATURE}/v1/training-sets/{snapshot}/data")))
    order = [i["name"] for i in call(f"{SERVING}/v2/models/bench_lr")["inputs"]]
    x = data[[f"raw.{f}" for f in order]].to_numpy()
    y = data["label"].to_numpy() >= 0.5
    models = {
        "bench_lr": make_pipeline(StandardScaler(), LogisticRegression(C=1.0)),
        "bench_rf": RandomForestClassifier(n_estimators=50, max_depth=8, random_state=7, n_jobs=1),
    }
    for name, model in models.items():
        model.fit(x, y)
        directory = os.path.join(out, "mlserver", name)
        os.makedirs(directory, exist_ok=True)
        joblib.dump(model, os.path.join(directory, "model.joblib"))
        with open(os.path.join(directory, "model-settings.json"), "w") as f:
            json.dump({"name": name, "implementation": "mlserver_sklearn.SKLearnModel",
                       "parameters": {"uri": "./model.joblib", "version": "v1"}}, f)
    with open(os.path.join(out, "mlserver", "settings.json"), "w") as f:
        # One worker per core, as the platform's serving uses every core.
        json.dump({"http_port": port, "grpc_port": port + 1, "metrics_port": port + 2,
                   "parallel_workers": 2, "debug": False}, f)
    rng = np.random.default_rng(11)
    for rows in (1, 32):
        body = {"id": "bench", "inputs": [{"name": "input-0", "shape": [rows, len(order)], "datatype": "FP64",
                                           "data": rng.uniform(0, 1, rows * len(order)).round(6).tolist()}],
                "outputs": [{"name": "predict_proba"}]}
        with open(os.path.join(out, f"body-{rows}.json"), "w") as f:
            json.dump(body, f)


def main():
    out, port = sys.argv[1], int(sys.argv[2])
    snapshots = platform()
    mlserver(snapshots["bench_lr"], out, port)


if __name__ == "__main__":
    main()
