//! Fitted transforms: learnt on a training snapshot, versioned with it, and applied the
//! same way everywhere — as polars expressions over a frame ([`apply`]) and over one
//! request's values ([`apply_row`]).

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value as Json;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Impute {
    Mean,
    Median,
    /// Most frequent value.
    Mode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scale {
    Zscore,
    Minmax,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encode {
    /// One 0/1 column per category seen in the snapshot, plus `<name>__unknown`.
    Onehot,
    /// Category index in the snapshot's sorted categories; unseen ones get the next index.
    Ordinal,
}

/// Transformations whose statistics are fitted on a training snapshot and versioned with it
/// (`impute`, `scale`, `encode` of a feature or aggregation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FittedTransforms {
    pub impute: Option<Impute>,
    pub scale: Option<Scale>,
    pub encode: Option<Encode>,
}

/// Learnt state of a feature's fitted transforms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FittedState {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub impute: Option<ImputeState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale: Option<ScaleState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encode: Option<EncodeState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImputeState {
    pub strategy: Impute,
    pub value: Json,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleState {
    pub kind: Scale,
    /// Mean (z-score) or minimum (min-max).
    pub center: f64,
    /// Standard deviation (z-score) or range (min-max); 1 when the data has no spread.
    pub spread: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EncodeState {
    pub kind: Encode,
    /// Categories seen in the snapshot, sorted.
    pub categories: Vec<String>,
}

/// Learns the transforms' state from `column`.
pub fn fit(column: &Column, spec: &FittedTransforms) -> PolarsResult<FittedState> {
    let series = column.as_materialized_series().clone();
    let mut state = FittedState::default();
    let mut values = series.clone();
    if let Some(strategy) = spec.impute {
        let value = match strategy {
            Impute::Mean => series.cast(&DataType::Float64)?.mean().map(Json::from),
            Impute::Median => series.cast(&DataType::Float64)?.median().map(Json::from),
            Impute::Mode => mode(&series)?,
        }
        .unwrap_or(Json::Null);
        values = values.fill_null_with_values_json(&value)?;
        state.impute = Some(ImputeState { strategy, value });
    }
    if let Some(kind) = spec.scale {
        let x = values.cast(&DataType::Float64)?;
        let (center, spread) = match kind {
            Scale::Zscore => (x.mean().unwrap_or(0.0), x.std(1).unwrap_or(1.0)),
            Scale::Minmax => {
                let min = x.min::<f64>()?.unwrap_or(0.0);
                let max = x.max::<f64>()?.unwrap_or(min);
                (min, max - min)
            }
        };
        let spread = if spread.is_finite() && spread > 0.0 {
            spread
        } else {
            1.0
        };
        state.scale = Some(ScaleState {
            kind,
            center,
            spread,
        });
    }
    if let Some(kind) = spec.encode {
        let categories = values
            .cast(&DataType::String)?
            .drop_nulls()
            .unique()?
            .sort(SortOptions::default())?;
        let categories = categories.str()?;
        let categories = (0..categories.len())
            .filter_map(|i| categories.get(i).map(str::to_owned))
            .collect();
        state.encode = Some(EncodeState { kind, categories });
    }
    Ok(state)
}

/// Expressions applying `state` to column `name`, and the columns they produce.
pub fn apply(name: &str, state: &FittedState) -> (Vec<Expr>, Vec<String>) {
    let mut x = col(name);
    if let Some(impute) = &state.impute {
        x = x.fill_null(crate::json_literal(&impute.value));
    }
    if let Some(scale) = &state.scale {
        x = ((x.cast(DataType::Float64) - lit(scale.center)) / lit(scale.spread)).alias(name);
        return (vec![x.alias(name)], vec![name.to_owned()]);
    }
    match &state.encode {
        None => (vec![x.alias(name)], vec![name.to_owned()]),
        Some(EncodeState {
            kind: Encode::Ordinal,
            categories,
        }) => {
            let text = x.cast(DataType::String);
            let mut code = lit(categories.len() as i64);
            for (i, category) in categories.iter().enumerate().rev() {
                code = when(text.clone().eq(lit(category.as_str())))
                    .then(lit(i as i64))
                    .otherwise(code);
            }
            (vec![code.alias(name)], vec![name.to_owned()])
        }
        Some(EncodeState {
            kind: Encode::Onehot,
            categories,
        }) => {
            let text = x.cast(DataType::String);
            let mut exprs = Vec::new();
            let mut outputs = Vec::new();
            let mut known = lit(false);
            for category in categories {
                let is = text
                    .clone()
                    .eq(lit(category.as_str()))
                    .fill_null(lit(false));
                known = known.or(is.clone());
                let output = onehot_name(name, category);
                exprs.push(is.cast(DataType::Int32).alias(output.as_str()));
                outputs.push(output);
            }
            let unknown = onehot_name(name, "unknown");
            exprs.push(known.not().cast(DataType::Int32).alias(unknown.as_str()));
            outputs.push(unknown);
            (exprs, outputs)
        }
    }
}

trait FillJson {
    fn fill_null_with_values_json(&self, value: &Json) -> PolarsResult<Series>;
}

impl FillJson for Series {
    fn fill_null_with_values_json(&self, value: &Json) -> PolarsResult<Series> {
        let frame = DataFrame::new_infer_height(vec![self.clone().into()])?;
        let name = self.name().clone();
        let filled = frame
            .lazy()
            .select([col(name.clone()).fill_null(crate::json_literal(value))])
            .collect()?;
        Ok(filled.column(&name)?.as_materialized_series().clone())
    }
}

fn mode(series: &Series) -> PolarsResult<Option<Json>> {
    let counts = value_counts(series)?;
    Ok(counts.into_iter().next().map(|(value, _)| value))
}

/// Non-null values and their counts, most frequent first (ties by value).
pub(crate) fn value_counts(series: &Series) -> PolarsResult<Vec<(Json, u64)>> {
    let name = series.name().clone();
    let frame = DataFrame::new_infer_height(vec![series.clone().into()])?
        .lazy()
        .filter(col(name.clone()).is_not_null())
        .group_by([col(name.clone())])
        .agg([len().alias("__count")])
        .sort(
            ["__count", name.as_str()],
            SortMultipleOptions::default().with_order_descending_multi([true, false]),
        )
        .collect()?;
    let values = frame.column(&name)?;
    let counts = frame.column("__count")?.cast(&DataType::UInt64)?;
    let counts = counts.u64()?;
    let mut out = Vec::with_capacity(frame.height());
    for i in 0..frame.height() {
        out.push((crate::json_of(&values.get(i)?), counts.get(i).unwrap_or(0)));
    }
    Ok(out)
}

/// [`apply`] for one value of feature `name`: the model inputs it makes, named and ordered
/// as [`apply`]'s outputs, with the same values (serving's path; a parity test holds the
/// two together).
pub fn apply_row(name: &str, state: &FittedState, value: &Json) -> Vec<(String, Json)> {
    let value = match (&state.impute, value) {
        (Some(impute), Json::Null) => impute.value.clone(),
        _ => value.clone(),
    };
    if let Some(scale) = &state.scale {
        let scaled = as_f64(&value)
            .map(|x| (x - scale.center) / scale.spread)
            .and_then(serde_json::Number::from_f64)
            .map_or(Json::Null, Json::Number);
        return vec![(name.to_owned(), scaled)];
    }
    let text = as_text(&value);
    match &state.encode {
        None => vec![(name.to_owned(), value)],
        Some(EncodeState {
            kind: Encode::Ordinal,
            categories,
        }) => {
            let code = text
                .and_then(|t| categories.iter().position(|c| *c == t))
                .unwrap_or(categories.len());
            vec![(name.to_owned(), Json::from(code as i64))]
        }
        Some(EncodeState {
            kind: Encode::Onehot,
            categories,
        }) => {
            let mut outputs: Vec<(String, Json)> = categories
                .iter()
                .map(|c| {
                    let is = text.as_deref() == Some(c.as_str());
                    (onehot_name(name, c), Json::from(i32::from(is)))
                })
                .collect();
            let known = outputs.iter().any(|(_, v)| v == &Json::from(1));
            outputs.push((onehot_name(name, "unknown"), Json::from(i32::from(!known))));
            outputs
        }
    }
}

/// The model input a one-hot encoded feature makes for one of its categories.
pub(crate) fn onehot_name(feature: &str, category: &str) -> String {
    format!("{feature}__{category}")
}

/// A value as polars casts it to a float: numbers, booleans as 1 and 0, numeric text.
pub(crate) fn as_f64(value: &Json) -> Option<f64> {
    match value {
        Json::Number(n) => n.as_f64(),
        Json::Bool(b) => Some(if *b { 1.0 } else { 0.0 }),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A value as polars casts it to text.
fn as_text(value: &Json) -> Option<String> {
    match value {
        Json::Null => None,
        Json::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(
        impute: Option<Impute>,
        scale: Option<Scale>,
        encode: Option<Encode>,
    ) -> FittedTransforms {
        FittedTransforms {
            impute,
            scale,
            encode,
        }
    }

    /// The frame path (training, feature service) and the row path (serving) give the same
    /// model inputs for the same values, nulls and unseen categories included.
    #[test]
    fn frame_and_row_paths_agree() {
        let train = df![
            "amount" => [Some(10.0), Some(20.0), None, Some(40.0), Some(20.0)],
            "count" => [Some(1i64), None, Some(1), Some(3), Some(5)],
            "currency" => [Some("EUR"), Some("AED"), Some("EUR"), None, Some("USD")],
        ]
        .unwrap();
        let live = df![
            "amount" => [Some(15.0), None, Some(-3.5)],
            "count" => [None, Some(2i64), Some(7)],
            "currency" => [Some("EUR"), Some("GBP"), None],
        ]
        .unwrap();
        let features = [
            (
                "amount",
                spec(Some(Impute::Mean), Some(Scale::Zscore), None),
            ),
            ("count", spec(Some(Impute::Mode), Some(Scale::Minmax), None)),
            (
                "currency",
                spec(Some(Impute::Mode), None, Some(Encode::Onehot)),
            ),
            ("currency", spec(None, None, Some(Encode::Ordinal))),
            ("count", spec(Some(Impute::Median), None, None)),
        ];
        for (name, transforms) in features {
            let state = fit(train.column(name).unwrap(), &transforms).unwrap();
            let (exprs, outputs) = apply(name, &state);
            let frame = live.clone().lazy().select(exprs).collect().unwrap();
            for row in 0..live.height() {
                let value = crate::json_of(&live.column(name).unwrap().get(row).unwrap());
                let by_row = apply_row(name, &state, &value);
                let names: Vec<&str> = by_row.iter().map(|(n, _)| n.as_str()).collect();
                assert_eq!(names, outputs, "{name} {transforms:?}");
                for (output, expected) in &by_row {
                    let got = crate::json_of(&frame.column(output).unwrap().get(row).unwrap());
                    let same = match (got.as_f64(), expected.as_f64()) {
                        (Some(a), Some(b)) => (a - b).abs() < 1e-12,
                        _ => got == *expected,
                    };
                    assert!(
                        same,
                        "{name} {transforms:?} row {row} {output}: frame {got}, row {expected}"
                    );
                }
            }
        }
    }
}
