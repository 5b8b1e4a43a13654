//! A training snapshot (the feature service's Parquet data, transforms already applied) as
//! the rows a model is fitted on.

use ndarray::Array2;
use polars::prelude::*;

use crate::trainer::Examples;

/// The model inputs `features` (the manifest's order) and the binary label of every row,
/// in the snapshot's order (event time). A missing input or label names its column: a
/// feature without imputation must not be null.
pub fn examples(frame: &DataFrame, features: &[String]) -> Result<Examples, String> {
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
        .map_err(|_| "the snapshot has no label column".to_owned())?
        .cast(&DataType::Float64)
        .map_err(|e| format!("label: a binary label must be numeric (0/1, or booleans): {e}"))?;
    let labels = label
        .f64()
        .map_err(|e| format!("label: {e}"))?
        .to_vec()
        .into_iter()
        .enumerate()
        .map(|(r, value)| match value {
            Some(v) if v == 0.0 || v == 1.0 => Ok(v == 1.0),
            Some(v) => Err(format!("label {v} in row {r} is not 0 or 1")),
            None => Err(format!("label is null in row {r}")),
        })
        .collect::<Result<Vec<bool>, String>>()?;
    Ok(Examples { inputs, labels })
}

/// The training snapshot of `spec` (limited to `[start, end)` of label event time when
/// given), from the feature service: built (or found, snapshots are content-addressed)
/// and read.
pub async fn fetch(
    http: &reqwest::Client,
    feature_url: &str,
    spec: &crate::spec::ModelSpec,
    window: (Option<i64>, Option<i64>),
) -> Result<(mlops_ml::Manifest, DataFrame), String> {
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
    let unreachable = |e: reqwest::Error| format!("the feature service is unreachable: {e}");
    let response = http
        .post(format!("{feature_url}/v1/training-sets"))
        .json(&request)
        .send()
        .await
        .map_err(unreachable)?;
    let status = response.status();
    let body: serde_json::Value = response.json().await.map_err(unreachable)?;
    if !status.is_success() {
        return Err(format!(
            "the feature service built no training set ({status}): {body}"
        ));
    }
    let manifest: mlops_ml::Manifest =
        serde_json::from_value(body).map_err(|e| format!("snapshot manifest: {e}"))?;
    let data = http
        .get(format!(
            "{feature_url}/v1/training-sets/{}/data",
            manifest.id
        ))
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
        let examples = examples(&frame, &features).unwrap();
        assert_eq!(examples.inputs.row(0).to_vec(), [1.0, 1.5]);
        assert_eq!(examples.labels, [true, false]);
    }

    #[test]
    fn a_null_input_or_a_non_binary_label_is_named() {
        let frame = df![
            "amount" => [Some(1.0), None],
            "label" => [1.0, 2.0],
        ]
        .unwrap();
        let error = examples(&frame, &["amount".to_owned()]).unwrap_err();
        assert!(error.contains("amount is null in row 1"), "{error}");
        let frame = df!["amount" => [1.0, 2.0], "label" => [1.0, 2.0]].unwrap();
        let error = examples(&frame, &["amount".to_owned()]).unwrap_err();
        assert!(error.contains("label 2 in row 1 is not 0 or 1"), "{error}");
    }
}
