//! A training snapshot (the feature service's Parquet data, transforms already applied) as
//! the rows a model is fitted on.

use mlops_telemetry::Traced;
use ndarray::Array2;
use polars::prelude::*;

use crate::{runner::Stop, spec::Task, trainer::Examples};

/// The model inputs `features` (the manifest's order) and the target of every row, in
/// the snapshot's order (event time), for `task`: a binary label (0/1, or booleans), a
/// class (the names, sorted, give the indices; returned as the second value), or a
/// number. A missing input or label names its column: a feature without imputation must
/// not be null.
pub fn examples(
    frame: &DataFrame,
    features: &[String],
    task: Task,
) -> Result<(Examples, Vec<String>), String> {
    let rows = frame.height();
    let mut inputs = Array2::<f64>::zeros((rows, features.len()));
    for (c, name) in features.iter().enumerate() {
        let column = frame
            .column(name)
            .map_err(|_| format!("the snapshot has no column {name:?}"))?
            .cast(&DataType::Float64)
            .map_err(|e| format!("{name}: not numeric: {e}"))?;
        let values = column.f64().map_err(|e| format!("{name}: {e}"))?;
        for (r, value) in values.to_vec().into_iter().enumerate() {
            inputs[[r, c]] = value.ok_or_else(|| {
                format!("{name} is null in row {r}: give the feature an `impute` in its view")
            })?;
        }
    }
    let label = frame
        .column("label")
        .map_err(|_| "the snapshot has no label column".to_owned())?;
    match task {
        Task::MulticlassClassification => {
            // Numeric classes are named as integers (`2`, not `2.0`).
            let names = if label.dtype().is_primitive_numeric() {
                label
                    .cast(&DataType::Int64)
                    .and_then(|c| c.cast(&DataType::String))
            } else {
                label.cast(&DataType::String)
            }
            .map_err(|e| format!("label: {e}"))?;
            let names = names.str().map_err(|e| format!("label: {e}"))?;
            let names: Vec<String> = (0..names.len())
                .map(|r| {
                    names
                        .get(r)
                        .map(str::to_owned)
                        .ok_or_else(|| format!("label is null in row {r}"))
                })
                .collect::<Result<_, String>>()?;
            let mut classes: Vec<String> = names.clone();
            classes.sort();
            classes.dedup();
            let indices = names
                .iter()
                .map(|n| classes.binary_search(n).unwrap_or_default())
                .collect();
            let count = classes.len();
            Ok((Examples::multiclass(inputs, indices, count), classes))
        }
        Task::BinaryClassification | Task::Regression => {
            let values: Vec<f64> = label
                .cast(&DataType::Float64)
                .map_err(|e| format!("label: must be numeric: {e}"))?
                .f64()
                .map_err(|e| format!("label: {e}"))?
                .to_vec()
                .into_iter()
                .enumerate()
                .map(|(r, v)| v.ok_or_else(|| format!("label is null in row {r}")))
                .collect::<Result<_, String>>()?;
            if task == Task::Regression {
                return Ok((Examples::regression(inputs, values), Vec::new()));
            }
            let labels = values
                .iter()
                .enumerate()
                .map(|(r, &v)| match v {
                    v if v == 0.0 || v == 1.0 => Ok(v == 1.0),
                    v => Err(format!("label {v} in row {r} is not 0 or 1")),
                })
                .collect::<Result<Vec<bool>, String>>()?;
            Ok((Examples::binary(inputs, labels), Vec::new()))
        }
    }
}

/// The training snapshot of `spec` (limited to `[start, end)` of label event time when
/// given), from the feature service: built (or found, snapshots are content-addressed)
/// and read. A feature service that cannot be reached or is not ready (502–504: restarting,
/// or its view still catching up with the raw topic) stops the attempt for now, not for
/// good.
pub async fn fetch(
    http: &reqwest::Client,
    feature_url: &str,
    spec: &crate::spec::ModelSpec,
    window: (Option<i64>, Option<i64>),
    region: Option<&str>,
) -> Result<(mlops_ml::Manifest, DataFrame), Stop> {
    let mut request = serde_json::json!({"view": spec.view});
    if let Some(version) = spec.view_version {
        request["view_version"] = version.into();
    }
    if let Some(dataset) = &spec.label_dataset {
        request["label_dataset"] = dataset.as_str().into();
    }
    if let Some(start) = window.0 {
        request["start"] = start.into();
    }
    if let Some(end) = window.1 {
        request["end"] = end.into();
    }
    let unreachable =
        |e: reqwest::Error| Stop::Transient(format!("the feature service is unreachable: {e}"));
    let response = http
        .post(format!("{feature_url}/v1/training-sets"))
        .traced()
        .json(&request)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(unreachable)?;
    if !status.is_success() {
        let reason = format!("the feature service built no training set ({status}): {body}");
        return Err(if is_transient(status) {
            Stop::Transient(reason)
        } else {
            Stop::Failed(reason)
        });
    }
    let manifest: mlops_ml::Manifest =
        serde_json::from_value(body).map_err(|e| format!("snapshot manifest: {e}"))?;
    // Residency: a model is trained only on data of this service's region.
    if let Some(reason) = mlops_events::topics::foreign_region(manifest.region.as_deref(), region) {
        return Err(Stop::Failed(format!(
            "training set {}: {reason}",
            manifest.id
        )));
    }
    let data = http
        .get(format!(
            "{feature_url}/v1/training-sets/{}/data",
            manifest.id
        ))
        .traced()
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(unreachable)?
        .bytes()
        .await
        .map_err(unreachable)?;
    let frame =
        mlops_runtime::cpu::run(move || ParquetReader::new(std::io::Cursor::new(data)).finish())
            .await
            .map_err(|e| format!("snapshot data: {e}"))?;
    Ok((manifest, frame))
}

/// Statuses that say "not now" rather than "no": a gateway or the service not ready.
fn is_transient(status: reqwest::StatusCode) -> bool {
    use reqwest::StatusCode;
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_becomes_rows_in_feature_order() {
        let frame = df![
            "label_id" => ["a", "b"],
            "amount" => [1.5, -0.5],
            "currency__EUR" => [1i32, 0],
            "label" => [1.0, 0.0],
        ]
        .unwrap();
        let features = vec!["currency__EUR".to_owned(), "amount".to_owned()];
        let (examples, _) = examples(&frame, &features, Task::BinaryClassification).unwrap();
        assert_eq!(examples.inputs.row(0).to_vec(), [1.0, 1.5]);
        assert_eq!(examples.labels, [true, false]);
        let (classes, names) =
            super::examples(&frame, &features, Task::MulticlassClassification).unwrap();
        assert_eq!(names, ["0", "1"]);
        assert_eq!(classes.targets, [1.0, 0.0]);
    }

    #[test]
    fn a_null_input_or_a_non_binary_label_is_named() {
        let frame = df![
            "amount" => [Some(1.0), None],
            "label" => [1.0, 2.0],
        ]
        .unwrap();
        let binary = Task::BinaryClassification;
        let error = examples(&frame, &["amount".to_owned()], binary).unwrap_err();
        assert!(error.contains("amount is null in row 1"), "{error}");
        let frame = df!["amount" => [1.0, 2.0], "label" => [1.0, 2.0]].unwrap();
        let error = examples(&frame, &["amount".to_owned()], binary).unwrap_err();
        assert!(error.contains("label 2 in row 1 is not 0 or 1"), "{error}");
    }
}
