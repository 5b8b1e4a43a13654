//! Point-in-time-correct training sets, written as immutable, content-addressed snapshots.
//!
//! For each label at time t the features are those of the entity's latest event at or
//! before t (an as-of join, never a value from after t). Fitted transforms (imputation,
//! scaling, encoding) learn their statistics on the snapshot and are stored with it, as are
//! the per-feature reference statistics the monitor uses as its drift baseline.

use std::collections::BTreeMap;

use polars::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

pub use mlops_ml::{Manifest, TimeRange};
use mlops_ml::{RAW_PREFIX, apply, fit, reference_statistics};

use crate::store::without_entities;
use crate::{
    catalog::ViewVersion,
    labels::LABELS_PREFIX,
    online::current_revisions,
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

#[derive(Debug, thiserror::Error)]
pub enum TrainingSetError {
    #[error("{0}")]
    NoLabels(String),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error("computing the training set: {0}")]
    Polars(#[from] PolarsError),
}

/// Builds (or finds) the snapshot of `request` for `version`. Returns the manifest and
/// whether it was created now.
///
/// `label_ends`: the labels topic's end offsets when the request came; labels received
/// after them are left to a later snapshot.
pub async fn build(
    store: &FeatureStore,
    version: &ViewVersion,
    request: &TrainingSetRequest,
    label_ends: &BTreeMap<i32, i64>,
    region: Option<&str>,
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
    // Erased entities (GDPR) are in no training set built after their erasure.
    let erased_in_source = store.erased_entities(&version.spec.source).await?;
    let erased_in_labels = if label_dataset == version.spec.source {
        erased_in_source.clone()
    } else {
        store.erased_entities(&label_dataset).await?
    };
    let labels = without_entities(labels, &erased_in_labels)?;
    let features = match features {
        Some(rows) => Some(without_entities(rows, &erased_in_source)?),
        None => None,
    };
    let received_before = received_before(label_ends);
    let (owned_version, owned_request) = (version.clone(), request.clone());
    let Snapshot {
        mut manifest,
        bytes,
    } = mlops_runtime::cpu::run(move || {
        assemble(
            labels,
            features,
            &owned_version,
            &owned_request,
            &label_dataset,
            received_before,
        )
    })
    .await?;
    manifest.region = region.map(str::to_owned);
    let manifest_path = format!("snapshots/{}/manifest.json", manifest.id);
    if let Some(existing) = store.get_json::<Manifest>(&manifest_path).await? {
        return Ok((existing, false));
    }
    // Data first: a manifest never names missing data.
    store.put(&manifest.data, bytes).await?;
    store.put_json(&manifest_path, &manifest).await?;
    Ok((manifest, true))
}

/// The labels the labels topic held below `ends` (partition → end offset).
fn received_before(ends: &BTreeMap<i32, i64>) -> Expr {
    ends.iter()
        .map(|(partition, end)| {
            col("source_partition")
                .eq(lit(*partition))
                .and(col("source_offset").lt(lit(*end)))
        })
        .reduce(Expr::or)
        .unwrap_or(lit(false))
}

/// A snapshot computed, not yet stored: its manifest (id: the request and the data's
/// bytes) and its Parquet data.
struct Snapshot {
    manifest: Manifest,
    bytes: Vec<u8>,
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
    received_before: Expr,
) -> Result<Snapshot, TrainingSetError> {
    let mut label_filter = col("dataset").eq(lit(label_dataset)).and(received_before);
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
            "no labels of dataset {label_dataset:?} in the requested time range (labels \
             received after this request are left to a later one)"
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
        fitted.insert(name.clone(), state);
    }
    let label_statistics = reference_statistics(joined.column("label")?)?;
    // The raw values ride along (`raw.<feature>`), so that a model trained on another
    // snapshot can be scored on this one through its own fitted transforms.
    let raw: Vec<Expr> = names
        .iter()
        .map(|n| col(n.as_str()).alias(format!("{RAW_PREFIX}{n}")))
        .collect();
    let mut data = joined
        .lazy()
        .with_columns(raw)
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
                names
                    .iter()
                    .map(|n| col(format!("{RAW_PREFIX}{n}")))
                    .collect(),
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
    let times = data.column("event_time")?.i64()?;
    let manifest = Manifest {
        view: version.name.clone(),
        view_version: version.version,
        label_dataset: label_dataset.to_owned(),
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
        region: None,
        id,
    };
    Ok(Snapshot { manifest, bytes })
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

#[cfg(test)]
mod tests {
    use mlops_ml::{FittedTransforms, Impute, json_literal};

    use super::*;

    /// Only labels below the ends taken when the request came are used: one sent while the
    /// view caught up may grade an event the view has not written yet.
    #[test]
    fn labels_past_the_requests_ends_wait_for_a_later_snapshot() {
        let labels = df![
            "label_id" => ["a", "b", "c", "d", "e"],
            "source_partition" => [0i32, 0, 0, 1, 1],
            "source_offset" => [0i64, 1, 2, 0, 1],
        ]
        .unwrap();
        let kept = |ends: BTreeMap<i32, i64>| -> Vec<Option<String>> {
            let frame = labels
                .clone()
                .lazy()
                .filter(received_before(&ends))
                .collect()
                .unwrap();
            let ids = frame.column("label_id").unwrap().str().unwrap().clone();
            ids.iter().map(|id| id.map(str::to_owned)).collect()
        };
        let some = |ids: &[&str]| {
            ids.iter()
                .map(|id| Some((*id).to_owned()))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            kept(BTreeMap::from([(0, 2), (1, 1)])),
            some(&["a", "b", "d"])
        );
        assert_eq!(
            kept(BTreeMap::from([(0, 3), (1, 2)])),
            some(&["a", "b", "c", "d", "e"])
        );
        // A partition the request did not see (created since) gives nothing.
        assert_eq!(kept(BTreeMap::from([(0, 3)])), some(&["a", "b", "c"]));
        assert_eq!(kept(BTreeMap::new()), some(&[]));
    }

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
