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
        let frame = DataFrame::new_infer_height(vec![x.clone().into()])?;
        let name = x.name().clone();
        let quantiles: Vec<Expr> = (0..=BINS)
            .map(|i| {
                col(name.clone())
                    .quantile(lit(i as f64 / BINS as f64), QuantileMethod::Linear)
                    .alias(format!("q{i}"))
            })
            .collect();
        let edges_frame = frame.clone().lazy().select(quantiles).collect()?;
        let mut edges: Vec<f64> = (0..=BINS)
            .filter_map(|i| {
                edges_frame
                    .column(&format!("q{i}"))
                    .ok()?
                    .f64()
                    .ok()?
                    .get(0)
            })
            .collect();
        edges.dedup();
        // Bin i holds (edge[i], edge[i+1]]; the first bin also holds its lower edge.
        let bins: Vec<Expr> = edges
            .windows(2)
            .enumerate()
            .map(|(i, w)| {
                let inside = col(name.clone()).lt_eq(lit(w[1]));
                let inside = if i == 0 {
                    inside.and(col(name.clone()).gt_eq(lit(w[0])))
                } else {
                    inside.and(col(name.clone()).gt(lit(w[0])))
                };
                inside.cast(DataType::UInt32).sum().alias(format!("b{i}"))
            })
            .collect();
        let counts: Vec<u64> = if bins.is_empty() {
            Vec::new()
        } else {
            let frame = frame.lazy().select(bins).collect()?;
            frame
                .columns()
                .iter()
                .map(|c| {
                    c.cast(&DataType::UInt64)
                        .ok()
                        .and_then(|c| c.u64().ok()?.get(0))
                        .unwrap_or(0)
                })
                .collect()
        };
        let mut sorted: Vec<f64> = x
            .f64()?
            .into_no_null_iter()
            .filter(|v| !v.is_nan())
            .collect();
        sorted.sort_by(f64::total_cmp);
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
