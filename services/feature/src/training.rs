//! Point-in-time-correct training sets, written as immutable, content-addressed snapshots.
//!
//! For each label at time t the features are those of the entity's latest event at or
//! before t (an as-of join, never a value from after t). Fitted transforms (imputation,
//! scaling, encoding) learn their statistics on the snapshot and are stored with it, as are
//! the per-feature reference statistics the monitor uses as its drift baseline.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};

use crate::{
    catalog::ViewVersion,
    labels::LABELS_PREFIX,
    online::current_revisions,
    pipeline::json_literal,
    spec::{Encode, FittedTransforms, Impute, Scale},
    store::{DateRange, FeatureStore, parquet_bytes},
};

/// `POST /v1/training-sets` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainingSetRequest {
    pub view: String,
    /// Defaults to the latest version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view_version: Option<i32>,
    /// Dataset of the labels; defaults to the view's source dataset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label_dataset: Option<String>,
    /// Only labels with `start <= event_time < end` (epoch milliseconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<i64>,
}

/// The manifest of a snapshot, stored next to its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of the request's meaning and the data: same inputs, same id.
    pub id: String,
    pub view: String,
    pub view_version: i32,
    pub label_dataset: String,
    pub rows: usize,
    /// Event-time range of the labels, epoch milliseconds.
    pub time_range: TimeRange,
    /// Model inputs, in order (after encoding).
    pub features: Vec<String>,
    /// Per raw feature: the reference statistics (drift baseline).
    pub statistics: BTreeMap<String, Json>,
    /// Per raw feature: the fitted transforms and their learnt state.
    pub fitted: BTreeMap<String, Json>,
    /// Label statistics.
    pub label: Json,
    pub data: String,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum TrainingSetError {
    #[error("{0}")]
    NoLabels(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("computing the training set: {0}")]
    Polars(#[from] PolarsError),
}

/// Bins of the numeric reference histograms (deciles).
const BINS: usize = 10;

/// Builds (or finds) the snapshot of `request` for `version`. Returns the manifest and
/// whether it was created now.
pub async fn build(
    store: &FeatureStore,
    version: &ViewVersion,
    request: &TrainingSetRequest,
) -> Result<(Manifest, bool), TrainingSetError> {
    let label_dataset = request
        .label_dataset
        .clone()
        .unwrap_or_else(|| version.spec.source.clone());
    // Only the dates the request asks for: labels in its range, features up to its end
    // (a label joins the latest feature row before it, however old).
    let labels_range = DateRange::of_millis(request.start, request.end);
    let features_range = DateRange {
        from: None,
        to: labels_range.to.clone(),
    };
    let Some(labels) = store.read_frames_in(LABELS_PREFIX, &labels_range).await? else {
        return Err(TrainingSetError::NoLabels(
            "no labels have been received yet".into(),
        ));
    };
    let features = store
        .read_frames_in(&version.offline_prefix(), &features_range)
        .await?;
    let (owned_version, owned_request, dataset) =
        (version.clone(), request.clone(), label_dataset.clone());
    let snapshot = mlops_runtime::cpu::run(move || {
        assemble(labels, features, &owned_version, &owned_request, &dataset)
    })
    .await?;
    let Snapshot {
        id,
        data,
        bytes,
        inputs,
        statistics,
        fitted,
        label_statistics,
    } = snapshot;
    let manifest_path = format!("snapshots/{id}/manifest.json");
    if let Some(existing) = store.get_json::<Manifest>(&manifest_path).await? {
        return Ok((existing, false));
    }
    let times = data.column("event_time")?.i64()?;
    let manifest = Manifest {
        id: id.clone(),
        view: version.name.clone(),
        view_version: version.version,
        label_dataset,
        rows: data.height(),
        time_range: TimeRange {
            start: times.min(),
            end: times.max(),
        },
        features: inputs,
        statistics,
        fitted,
        label: label_statistics,
        data: format!("snapshots/{id}/data.parquet"),
        created_at: mlops_events::now_millis(),
    };
    // Data first: a manifest never names missing data.
    store.put(&manifest.data, bytes).await?;
    store.put_json(&manifest_path, &manifest).await?;
    Ok((manifest, true))
}

/// A snapshot computed, not yet stored.
struct Snapshot {
    /// Content address: the request and the data's bytes.
    id: String,
    data: DataFrame,
    bytes: Vec<u8>,
    inputs: Vec<String>,
    statistics: BTreeMap<String, Json>,
    fitted: BTreeMap<String, Json>,
    label_statistics: Json,
}

/// The CPU part of [`build`]: labels in the range, each joined as of its event time to
/// the entity's latest feature row, transforms fitted on the result, reference statistics,
/// Parquet bytes and the snapshot's id.
fn assemble(
    labels: DataFrame,
    features: Option<DataFrame>,
    version: &ViewVersion,
    request: &TrainingSetRequest,
    label_dataset: &str,
) -> Result<Snapshot, TrainingSetError> {
    let mut label_filter = col("dataset").eq(lit(label_dataset));
    if let Some(start) = request.start {
        label_filter = label_filter.and(col("event_time").gt_eq(lit(start)));
    }
    if let Some(end) = request.end {
        label_filter = label_filter.and(col("event_time").lt(lit(end)));
    }
    let labels = labels
        .lazy()
        .filter(label_filter)
        // A label re-sent with the same id counts once (the last one received).
        .sort(
            ["received_at", "source_partition", "source_offset"],
            Default::default(),
        )
        .unique_stable(Some(cols(["label_id"])), UniqueKeepStrategy::Last)
        .sort(
            ["event_time", "entity_id", "label_id"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()?;
    if labels.height() == 0 {
        return Err(TrainingSetError::NoLabels(format!(
            "no labels of dataset {label_dataset:?} in the requested time range"
        )));
    }
    let label_is_numeric = labels.column("label_class")?.null_count() == labels.height();

    let names: Vec<String> = version.features.iter().map(|f| f.name.clone()).collect();
    let mut feature_columns = vec![
        col("entity_id"),
        col("event_time"),
        col("event_time").alias("feature_time"),
    ];
    feature_columns.extend(names.iter().map(|n| col(n.as_str())));
    let features = match features {
        Some(rows) => current_revisions(rows.lazy())
            .sort(
                ["event_time", "source_partition", "source_offset"],
                SortMultipleOptions::default().with_maintain_order(true),
            )
            .select(feature_columns),
        None => DataFrame::empty_with_schema(&empty_feature_schema(version))
            .lazy()
            .select(feature_columns),
    };

    let as_of = AsOfOptions {
        strategy: AsofStrategy::Backward,
        left_by: Some(vec!["entity_id".into()]),
        right_by: Some(vec!["entity_id".into()]),
        allow_eq: true,
        check_sortedness: false,
        ..Default::default()
    };
    let label = if label_is_numeric {
        col("label_value").alias("label")
    } else {
        col("label_value")
            .cast(DataType::String)
            .fill_null(col("label_class"))
            .alias("label")
    };
    let joined = labels
        .lazy()
        .join(
            features,
            [col("event_time")],
            [col("event_time")],
            JoinArgs::new(JoinType::AsOf(Box::new(as_of))),
        )
        .select(
            [
                vec![
                    col("label_id"),
                    col("entity_id"),
                    col("event_time"),
                    col("feature_time"),
                ],
                names.iter().map(|n| col(n.as_str())).collect(),
                vec![label],
            ]
            .concat(),
        )
        .sort(
            ["event_time", "entity_id", "label_id"],
            SortMultipleOptions::default().with_maintain_order(true),
        )
        .collect()?;

    let mut statistics = BTreeMap::new();
    let mut fitted = BTreeMap::new();
    let mut transforms = Vec::new();
    let mut inputs = Vec::new();
    for name in &names {
        let column = joined.column(name)?;
        statistics.insert(name.clone(), reference_statistics(column)?);
        let spec_fitted = version
            .spec
            .features
            .iter()
            .find(|f| &f.name == name)
            .map(|f| f.fitted())
            .or_else(|| {
                version
                    .spec
                    .aggregations
                    .iter()
                    .find(|a| &a.name == name)
                    .map(|a| a.fitted())
            })
            .unwrap_or_default();
        let state = fit(column, &spec_fitted)?;
        let (exprs, outputs) = apply(name, &state);
        transforms.extend(exprs);
        inputs.extend(outputs);
        fitted.insert(
            name.clone(),
            serde_json::to_value(&state).unwrap_or(Json::Null),
        );
    }
    let label_statistics = reference_statistics(joined.column("label")?)?;
    let mut data = joined
        .lazy()
        .with_columns(transforms)
        .select(
            [
                vec![
                    col("label_id"),
                    col("entity_id"),
                    col("event_time"),
                    col("feature_time"),
                ],
                inputs.iter().map(|n| col(n.as_str())).collect(),
                vec![col("label")],
            ]
            .concat(),
        )
        .collect()?;

    let bytes = parquet_bytes(&mut data)?;
    let mut hasher = Sha256::new();
    hasher.update(
        json!({
            "view": version.name,
            "view_version": version.version,
            "label_dataset": label_dataset,
            "start": request.start,
            "end": request.end,
        })
        .to_string(),
    );
    hasher.update(&bytes);
    let id = hex::encode(hasher.finalize());
    Ok(Snapshot {
        id,
        data,
        bytes,
        inputs,
        statistics,
        fitted,
        label_statistics,
    })
}

fn empty_feature_schema(version: &ViewVersion) -> Schema {
    let mut schema = Schema::default();
    schema.insert("entity_id".into(), DataType::String);
    schema.insert("event_time".into(), DataType::Int64);
    for feature in &version.features {
        let dtype = match feature.avro_type.as_str() {
            "long" => DataType::Int64,
            "double" => DataType::Float64,
            "boolean" => DataType::Boolean,
            _ => DataType::String,
        };
        schema.insert(feature.name.as_str().into(), dtype);
    }
    schema
}

/// Every snapshot's manifest, newest first.
pub async fn list(store: &FeatureStore) -> Result<Vec<Manifest>, TrainingSetError> {
    let mut manifests = Vec::new();
    for path in store.list("snapshots/").await? {
        if path.ends_with("/manifest.json")
            && let Some(manifest) = store.get_json::<Manifest>(&path).await?
        {
            manifests.push(manifest);
        }
    }
    manifests.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(a.id.cmp(&b.id)));
    Ok(manifests)
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
        x = x.fill_null(json_literal(&impute.value));
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
                let output = format!("{name}__{category}");
                exprs.push(is.cast(DataType::Int32).alias(output.as_str()));
                outputs.push(output);
            }
            let unknown = format!("{name}__unknown");
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
            .select([col(name.clone()).fill_null(json_literal(value))])
            .collect()?;
        Ok(filled.column(&name)?.as_materialized_series().clone())
    }
}

fn mode(series: &Series) -> PolarsResult<Option<Json>> {
    let counts = value_counts(series)?;
    Ok(counts.into_iter().next().map(|(value, _)| value))
}

/// Non-null values and their counts, most frequent first (ties by value).
fn value_counts(series: &Series) -> PolarsResult<Vec<(Json, u64)>> {
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
        out.push((
            crate::online::json_of(&values.get(i)?),
            counts.get(i).unwrap_or(0),
        ));
    }
    Ok(out)
}

/// Reference statistics of one column: null rate always; for numbers, moments and decile
/// bins with their counts; for categories, their frequencies.
pub fn reference_statistics(column: &Column) -> PolarsResult<Json> {
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
        Ok(json!({
            "kind": "numeric",
            "count": count,
            "null_rate": null_rate,
            "mean": x.mean(),
            "std": x.std(1),
            "min": x.min::<f64>()?,
            "max": x.max::<f64>()?,
            "bin_edges": edges,
            "bin_counts": counts,
        }))
    } else {
        let frequencies: serde_json::Map<String, Json> = value_counts(series)?
            .into_iter()
            .map(|(value, n)| {
                let key = match value {
                    Json::String(s) => s,
                    other => other.to_string(),
                };
                (key, Json::from(n))
            })
            .collect();
        Ok(json!({
            "kind": "categorical",
            "count": count,
            "null_rate": null_rate,
            "frequencies": frequencies,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The stream's `fill` and the snapshot's fitted imputation turn a JSON value into the
    /// same literal: an integer column stays an integer column in both.
    #[test]
    fn fitted_imputation_fills_like_the_streams_fill() {
        let frame = df!["x" => [Some(1i64), None, Some(1), Some(3)]].unwrap();
        let spec = FittedTransforms {
            impute: Some(Impute::Mode),
            ..Default::default()
        };
        let state = fit(frame.column("x").unwrap(), &spec).unwrap();
        let value = state.impute.as_ref().unwrap().value.clone();
        assert_eq!(value, json!(1));
        let (exprs, _) = apply("x", &state);
        let snapshot = frame.clone().lazy().select(exprs).collect().unwrap();
        let stream = frame
            .lazy()
            .select([col("x").fill_null(json_literal(&value))])
            .collect()
            .unwrap();
        assert_eq!(snapshot.column("x").unwrap().dtype(), &DataType::Int64);
        assert_eq!(snapshot, stream);
        assert_eq!(
            snapshot.column("x").unwrap().i64().unwrap().to_vec(),
            [Some(1), Some(1), Some(1), Some(3)]
        );
    }
}
