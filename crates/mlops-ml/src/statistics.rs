//! Reference statistics of a snapshot's columns: the baseline the monitor compares live
//! traffic with.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};

/// Bins of the numeric reference histograms (deciles).
const BINS: usize = 10;

/// Points of a numeric column's quantile sketch.
pub const SKETCH: usize = 1_000;

/// The statistics of one column (JSON: `{"kind": "numeric", ...}` or `{"kind":
/// "categorical", ...}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum ReferenceStatistics {
    Numeric {
        count: usize,
        null_rate: f64,
        mean: Option<f64>,
        std: Option<f64>,
        min: Option<f64>,
        max: Option<f64>,
        /// Decile edges (deduplicated); bin i holds (edge[i], edge[i+1]], the first bin
        /// its lower edge too.
        bin_edges: Vec<f64>,
        bin_counts: Vec<u64>,
        /// A quantile sketch for the Kolmogorov–Smirnov test: the column's values at
        /// [`SKETCH`] evenly spaced ranks (all of them when there are fewer), sorted. It
        /// reproduces the column's distribution function to 1/[`SKETCH`].
        #[serde(default)]
        sketch: Vec<f64>,
    },
    Categorical {
        count: usize,
        null_rate: f64,
        /// Count of each value (as text).
        frequencies: BTreeMap<String, u64>,
    },
}

/// The `q` quantile of sorted, non-empty `values`, interpolated linearly between the two
/// nearest ranks.
fn quantile(values: &[f64], q: f64) -> f64 {
    let position = (values.len() - 1) as f64 * q;
    let below = position.floor() as usize;
    let above = (below + 1).min(values.len() - 1);
    let fraction = position - below as f64;
    values[below] + (values[above] - values[below]) * fraction
}

/// Reference statistics of one column: null rate always; for numbers, moments and decile
/// bins with their counts; for categories, their frequencies.
pub fn reference_statistics(column: &Column) -> PolarsResult<ReferenceStatistics> {
    let series = column.as_materialized_series();
    let count = series.len();
    let nulls = series.null_count();
    let null_rate = if count == 0 {
        0.0
    } else {
        nulls as f64 / count as f64
    };
    if series.dtype().is_primitive_numeric() {
        let x = series.cast(&DataType::Float64)?;
        // One sort gives the deciles (linear interpolation, as numpy and polars define
        // it), the bin counts and the sketch.
        let mut sorted: Vec<f64> = x
            .f64()?
            .into_no_null_iter()
            .filter(|v| !v.is_nan())
            .collect();
        sorted.sort_unstable_by(f64::total_cmp);
        let mut edges: Vec<f64> = if sorted.is_empty() {
            Vec::new()
        } else {
            (0..=BINS)
                .map(|i| quantile(&sorted, i as f64 / BINS as f64))
                .collect()
        };
        edges.dedup();
        // Bin i holds (edge[i], edge[i+1]]; the first bin also holds its lower edge. Every
        // value lies within [edge[0], edge[last]], so the open-binned histogram is it.
        let counts: Vec<u64> = if edges.len() < 2 {
            Vec::new()
        } else {
            crate::drift::histogram(&edges, sorted.iter().copied())
        };
        let sketch = if sorted.len() <= SKETCH {
            sorted
        } else {
            (0..SKETCH)
                .map(|k| sorted[((k as f64 + 0.5) * sorted.len() as f64 / SKETCH as f64) as usize])
                .collect()
        };
        Ok(ReferenceStatistics::Numeric {
            count,
            null_rate,
            sketch,
            mean: x.mean(),
            std: x.std(1),
            min: x.min::<f64>()?,
            max: x.max::<f64>()?,
            bin_edges: edges,
            bin_counts: counts,
        })
    } else {
        let frequencies = crate::transforms::value_counts(series)?
            .into_iter()
            .map(|(value, n)| {
                let key = match value {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                (key, n)
            })
            .collect();
        Ok(ReferenceStatistics::Categorical {
            count,
            null_rate,
            frequencies,
        })
    }
}
