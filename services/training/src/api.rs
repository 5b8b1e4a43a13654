//! The training service's HTTP API: model specs (`/v1/models/specs`) and manual training
//! runs (`/v1/training-runs`). A run asks the feature service for the spec's training
//! snapshot, trains on the CPU pool, and keeps its record and, when the gate passes, the
//! signed artifact under `<data dir>/artifacts/<sha256>.mlart`.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    path::PathBuf,
    sync::{Arc, RwLock},
};

use axum::{
    Json as Body, Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    routing::{get, post},
};
use mlops_ml::{Manifest, Signer};
use mlops_service::{
    ApiError,
    routes::{Role, Route},
};
use polars::prelude::{ParquetReader, SerReader};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::spec::ModelSpec;

/// Every route of the training API and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("POST", "/v1/models/specs", Role::Operator),
    Route::new("GET", "/v1/models/specs", Role::Reader),
    Route::new("GET", "/v1/models/specs/{name}", Role::Reader),
    Route::new("POST", "/v1/training-runs", Role::Operator),
    Route::new("GET", "/v1/training-runs", Role::Reader),
    Route::new("GET", "/v1/training-runs/{id}", Role::Reader),
];

pub struct App {
    pub(crate) specs: RwLock<BTreeMap<String, ModelSpec>>,
    pub(crate) runs: RwLock<HashMap<String, Json>>,
    pub(crate) feature_url: String,
    pub(crate) artifacts: PathBuf,
    pub(crate) signer: Arc<Signer>,
    pub(crate) http: reqwest::Client,
}

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/models/specs", post(declare_spec).get(list_specs))
        .route("/v1/models/specs/{name}", get(get_spec))
        .route("/v1/training-runs", post(start_run).get(list_runs))
        .route("/v1/training-runs/{id}", get(get_run))
        .with_state(app)
}

async fn declare_spec(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Body<Json>), ApiError> {
    let toml = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|t| t.starts_with("application/toml"));
    let text = std::str::from_utf8(&body).map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "the body is not UTF-8",
        )
    })?;
    let spec = ModelSpec::parse(text, toml).map_err(|fields| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_spec",
            "the model spec is not valid",
        )
        .with_fields(fields)
    })?;
    let body = serde_json::to_value(&spec).unwrap_or(Json::Null);
    let replaced = app
        .specs
        .write()
        .expect("specs")
        .insert(spec.name.clone(), spec)
        .is_some();
    Ok((
        if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Body(body),
    ))
}

async fn list_specs(State(app): State<Arc<App>>) -> Body<Json> {
    let specs: Vec<Json> = app
        .specs
        .read()
        .expect("specs")
        .values()
        .map(|s| serde_json::to_value(s).unwrap_or(Json::Null))
        .collect();
    Body(json!({ "specs": specs }))
}

fn unknown_model(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_model",
        format!("no model spec named {name:?}"),
    )
}

async fn get_spec(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, ApiError> {
    let specs = app.specs.read().expect("specs");
    let spec = specs.get(&name).ok_or_else(|| unknown_model(&name))?;
    Ok(Body(serde_json::to_value(spec).unwrap_or(Json::Null)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    model: String,
}

async fn start_run(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<(StatusCode, Body<Json>), ApiError> {
    let request: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("expected {{\"model\": <name>}}: {e}"),
        )
    })?;
    let spec = app
        .specs
        .read()
        .expect("specs")
        .get(&request.model)
        .cloned()
        .ok_or_else(|| unknown_model(&request.model))?;
    let (manifest, frame) = snapshot(&app, &spec).await?;
    let signer = app.signer.clone();
    let (owned_spec, owned_manifest) = (spec.clone(), manifest.clone());
    let outcome = mlops_runtime::cpu::run(move || {
        crate::run::train(
            &owned_spec,
            &owned_manifest,
            &frame,
            None,
            &signer,
            mlops_events::now_millis(),
        )
    })
    .await
    .map_err(|reason| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "cannot_train", reason))?;
    let id = mlops_events::new_id();
    let artifact = match &outcome.artifact {
        None => Json::Null,
        Some(bytes) => {
            let digest = mlops_ml::artifact::digest(bytes);
            let path = app.artifacts.join(format!("{digest}.mlart"));
            std::fs::create_dir_all(&app.artifacts)
                .and_then(|()| std::fs::write(&path, bytes))
                .map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "artifact_not_stored",
                        e.to_string(),
                    )
                })?;
            json!({"sha256": digest, "path": path.display().to_string()})
        }
    };
    let trials: Vec<Json> = outcome
        .trials
        .iter()
        .map(|t| {
            json!({"algorithm": t.algorithm, "hyperparameters": t.hyperparameters, "metrics": t.metrics})
        })
        .collect();
    let record = json!({
        "id": id,
        "model": spec.name,
        "snapshot_id": manifest.id,
        "view": manifest.view,
        "view_version": manifest.view_version,
        "trials": trials,
        "best": outcome.best,
        "gate": match &outcome.gate {
            Ok(()) => json!({"passed": true}),
            Err(reason) => json!({"passed": false, "reason": reason}),
        },
        "artifact": artifact,
    });
    app.runs.write().expect("runs").insert(id, record.clone());
    Ok((StatusCode::CREATED, Body(record)))
}

/// The spec's training snapshot, from the feature service: built (or found) and read.
async fn snapshot(
    app: &App,
    spec: &ModelSpec,
) -> Result<(Manifest, polars::prelude::DataFrame), ApiError> {
    let unavailable = |e: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "feature_service_unavailable",
            e,
        )
    };
    let mut request = json!({"view": spec.view});
    if let Some(version) = spec.view_version {
        request["version"] = json!(version);
    }
    if let Some(dataset) = &spec.label_dataset {
        request["label_dataset"] = json!(dataset);
    }
    let response = app
        .http
        .post(format!("{}/v1/training-sets", app.feature_url))
        .json(&request)
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status();
    let body: Json = response
        .json()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    if !status.is_success() {
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "no_training_set",
            format!("the feature service answered {status}: {body}"),
        ));
    }
    let manifest: Manifest =
        serde_json::from_value(body).map_err(|e| unavailable(format!("manifest: {e}")))?;
    let data = app
        .http
        .get(format!(
            "{}/v1/training-sets/{}/data",
            app.feature_url, manifest.id
        ))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| unavailable(e.to_string()))?
        .bytes()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let frame = mlops_runtime::cpu::run(move || ParquetReader::new(Cursor::new(data)).finish())
        .await
        .map_err(|e| unavailable(format!("snapshot data: {e}")))?;
    Ok((manifest, frame))
}

async fn list_runs(State(app): State<Arc<App>>) -> Body<Json> {
    let runs: Vec<Json> = app.runs.read().expect("runs").values().cloned().collect();
    Body(json!({ "runs": runs }))
}

async fn get_run(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Body<Json>, ApiError> {
    app.runs
        .read()
        .expect("runs")
        .get(&id)
        .cloned()
        .map(Body)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "unknown_run",
                format!("no training run {id:?}"),
            )
        })
}
