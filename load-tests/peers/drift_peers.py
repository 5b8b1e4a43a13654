"""The peers of the drift benchmark, on the tables `drift-bench` wrote.

  scipy      per column: PSI over the reference's deciles (numpy, the platform's binning:
             linear-interpolated quantiles, open outer bins, shares floored at 1e-4) and
             scipy.stats.ks_2samp with its default method (for tables above 10,000 rows
             that is kstwo.sf(D, round(n*m/(n+m))), the p-value the platform states).
  evidently  Evidently's DataDriftPreset over all columns, once with num_method="psi" and
             once with "ks" (its own binning for PSI; its KS is scipy's).

Prints one JSON line: wall and process CPU seconds of the timed part, and per column the
statistics.
"""

import json
import sys
import time

import numpy as np
import pandas as pd

FLOOR = 1e-4


def psi(reference, current):
    edges = np.unique(np.quantile(reference, np.linspace(0.0, 1.0, 11)))
    inner = edges[1:-1]
    # Bin of a value: the number of inner edges strictly below it.
    expected = np.bincount(np.searchsorted(inner, reference, side="left"), minlength=len(edges) - 1)
    actual = np.bincount(np.searchsorted(inner, current, side="left"), minlength=len(edges) - 1)
    e = np.maximum(expected / expected.sum(), FLOOR)
    a = np.maximum(actual / actual.sum(), FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def run_scipy(reference, current):
    from scipy import stats

    out = []
    for name in reference.columns:
        r, c = reference[name].to_numpy(), current[name].to_numpy()
        ks = stats.ks_2samp(r, c)
        out.append({
            "feature": name,
            "psi": psi(r, c),
            "ks": float(ks.statistic),
            "ks_p": float(ks.pvalue),
        })
    return out


def run_evidently(reference, current):
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=list(reference.columns))
    ref = Dataset.from_pandas(reference, data_definition=definition)
    cur = Dataset.from_pandas(current, data_definition=definition)
    values = {}
    for method in ("psi", "ks"):
        result = Report([DataDriftPreset(num_method=method)]).run(current_data=cur, reference_data=ref)
        for metric in result.dict()["metrics"]:
            name = metric.get("metric_name", "")
            if name.startswith("ValueDrift("):
                column = name.split("column=")[1].split(",")[0].rstrip(")")
                values.setdefault(column, {"feature": column})[method] = metric["value"]
    return list(values.values())


def cpu():
    return time.process_time()


def main():
    peer, directory = sys.argv[1], sys.argv[2]
    reference = pd.read_parquet(f"{directory}/reference.parquet")
    current = pd.read_parquet(f"{directory}/current.parquet")
    run = {"scipy": run_scipy, "evidently": run_evidently}[peer]
    started_cpu, started = cpu(), time.perf_counter()
    statistics = run(reference, current)
    seconds, cpu_seconds = time.perf_counter() - started, cpu() - started_cpu
    print(json.dumps({
        "part": peer,
        "features": reference.shape[1],
        "rows": reference.shape[0],
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "statistics": statistics,
    }))


if __name__ == "__main__":
    main()
