#!/usr/bin/env bash
# Side-by-side drift statistics on this machine: the monitor's PSI + Kolmogorov–Smirnov
# (`drift-bench`, in process) against scipy per column and Evidently's DataDriftPreset, on
# the same tables (BENCH_FEATURES numeric features, BENCH_ROWS reference and current rows).
# Prints one JSON line per run, then the ratios and how far the statistics agree.
#
#   load-tests/drift.sh        (BENCH_FEATURES=100, BENCH_ROWS=100000 by default)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
features=${BENCH_FEATURES:-100}
rows=${BENCH_ROWS:-100000}
cache="${MLOPS_CACHE_DIR:-$HOME/.cache/mlops}"

cargo build --release --locked --bin drift-bench
target=${CARGO_TARGET_DIR:-$root/target}/release
venv="$cache/drift-venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -r load-tests/peers/drift-requirements.txt

work=$(mktemp -d -t mlops-drift.XXXXXX)
trap 'rm -rf "$work"' EXIT
"$target/drift-bench" --features "$features" --rows "$rows" --write-dir "$work" > "$work/platform.json"
"$venv/bin/python" load-tests/peers/drift_peers.py scipy "$work" > "$work/scipy.json"
"$venv/bin/python" load-tests/peers/drift_peers.py evidently "$work" > "$work/evidently.json"

"$venv/bin/python" - "$work" <<'PY'
import json, sys
runs = {name: json.load(open(f"{sys.argv[1]}/{name}.json")) for name in ("platform", "scipy", "evidently")}
for name, run in runs.items():
    print(json.dumps({k: run[k] for k in ("part", "features", "rows", "seconds", "cpu_seconds")}))
ours = {s["feature"]: s for s in runs["platform"]["statistics"]}
scipy = {s["feature"]: s for s in runs["scipy"]["statistics"]}
evidently = {s["feature"]: s for s in runs["evidently"]["statistics"]}
def worst(a, b, key_a, key_b):
    return max(abs(a[f][key_a] - b[f][key_b]) for f in a)
agreement = {
    "psi_vs_numpy_same_bins": worst(ours, scipy, "psi", "psi"),
    "ks_statistic_vs_scipy": worst(ours, scipy, "ks", "ks"),
    "ks_p_vs_scipy_ks_2samp": worst(ours, scipy, "ks_p", "ks_p"),
    "ks_p_vs_evidently": worst(ours, evidently, "ks_p", "ks"),
}
ratio = lambda peer, key: round(runs[peer][key] / runs["platform"][key], 1)
print(json.dumps({
    "agreement_max_abs_difference": agreement,
    "drifted_features_platform": runs["platform"]["drifted"],
    "vs_scipy": {"wall": ratio("scipy", "seconds"), "cpu": ratio("scipy", "cpu_seconds")},
    "vs_evidently": {"wall": ratio("evidently", "seconds"), "cpu": ratio("evidently", "cpu_seconds")},
}))
bad = {k: v for k, v in agreement.items() if k in ("psi_vs_numpy_same_bins", "ks_statistic_vs_scipy", "ks_p_vs_scipy_ks_2samp") and v > 1e-6}
if bad:
    sys.exit(f"statistics differ by more than 1e-6: {bad}")
PY
