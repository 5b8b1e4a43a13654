"""The peer of the feature pipeline benchmark: the same streaming feature view written the
way a Python team would, with pandas — per customer, count / sum / mean of `amount` over a
sliding 1 h event-time window, 10 min of allowed lateness, in micro-batches with a buffer of
recent events carried between them.

It does what the platform's pipeline does per micro-batch (services/feature/src/pipeline.rs):
flag events older than their partition's newest event time seen before them minus the
lateness; merge the on-time ones with the buffer, sorted by customer and time; compute the
windows; emit every new event's row plus the buffered rows of the same customer that an
out-of-order event changed; keep what a later on-time event can still see.

    python pandas_features.py events.parquet [--batch 10000]

Reads the events written by `feature-bench --write-events` and prints one JSON line with
the same checksum as the platform's, so that both are seen to compute the same thing.
"""

import argparse
import json
import time

import numpy as np
import pandas as pd

WINDOW_MS = 3_600_000
LATENESS_MS = 600_000


class Pipeline:
    def __init__(self):
        self.buffer = None
        self.watermarks = {}

    def process(self, batch: pd.DataFrame):
        marks = batch["__partition"].map(self.watermarks).astype("float64")
        seen = (
            batch.groupby("__partition", sort=False)["__time"]
            .transform(lambda t: t.cummax().shift(1))
            .astype("float64")
        )
        newest_before = np.fmax(seen.to_numpy(), marks.to_numpy())
        late = batch["__time"].to_numpy() < newest_before - LATENESS_MS
        on_time = batch[~late].assign(new=True)

        parts = [on_time] if self.buffer is None else [self.buffer.assign(new=False), on_time]
        combined = pd.concat(parts, ignore_index=True).sort_values(
            ["__entity", "__time", "__partition", "__offset"], kind="stable", ignore_index=True
        )
        for partition, newest in combined.groupby("__partition")["__time"].max().items():
            self.watermarks[partition] = max(self.watermarks.get(partition, newest), newest)

        combined["ts"] = pd.to_datetime(combined["__time"], unit="ms")
        windows = combined.groupby("__entity", sort=False).rolling(
            f"{WINDOW_MS}ms", on="ts", closed="right", min_periods=1
        )["amount"]
        # Groups come in order of appearance, which is the frame's (sorted by customer),
        # and each group's rows in the frame's order: the results line up with the rows.
        for name, values in (
            ("count_1h", windows.count()),
            ("sum_1h", windows.sum()),
            ("mean_1h", windows.mean()),
        ):
            combined[name] = values.to_numpy()

        first_new = combined["__time"].where(combined["new"]).groupby(combined["__entity"]).transform("min")
        emit = combined["new"] | (
            (combined["__time"] >= first_new) & (combined["__time"] < first_new + WINDOW_MS)
        )
        rows = combined[emit]

        horizon = LATENESS_MS + WINDOW_MS
        keep = combined["__time"] > combined["__partition"].map(self.watermarks) - horizon
        self.buffer = combined.loc[keep, batch.columns]
        return rows, int(late.sum())


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("events")
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    events = pd.read_parquet(args.events)

    pipeline = Pipeline()
    batch_ms = []
    cpu = 0.0  # CPU seconds of this process over the batches only
    checksum = {"rows": 0, "late": 0, "count_1h": 0.0, "sum_1h": 0.0, "mean_1h": 0.0}
    for start in range(0, len(events), args.batch):
        batch = events.iloc[start : start + args.batch].reset_index(drop=True)
        began, cpu_began = time.perf_counter(), time.process_time()
        rows, late = pipeline.process(batch)
        batch_ms.append((time.perf_counter() - began) * 1000)
        cpu += time.process_time() - cpu_began
        checksum["rows"] += len(rows)
        checksum["late"] += late
        for name in ("count_1h", "sum_1h", "mean_1h"):
            checksum[name] += float(rows[name].sum())

    seconds = sum(batch_ms) / 1000
    print(
        json.dumps(
            {
                "label": "peer-pandas",
                "part": "pipeline",
                "events": len(events),
                "batch_size": args.batch,
                "batches": len(batch_ms),
                "events_per_s": round(len(events) / seconds),
                "seconds": seconds,
                "cpu_seconds": cpu,
                "cpu_seconds_per_1000_events": 1000 * cpu / len(events),
                "batch_ms": {
                    "p50": float(np.percentile(batch_ms, 50)),
                    "p99": float(np.percentile(batch_ms, 99)),
                    "max": max(batch_ms),
                },
                "checksum": checksum,
                "pandas": pd.__version__,
            }
        )
    )


if __name__ == "__main__":
    main()
