//! The training service's HTTP API: model specs (`/v1/models/specs`) and training runs
//! (`/v1/training-runs`). A manual run is a training request like those on
//! `training.requests`: recorded, coalesced with the model's pending or running run, and
//! answered at once (202) with the run it joined; its record fills in as it runs.

use std::sync::Arc;

use axum::{
    Json as Body, Router,
    body::Bytes,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode, header},
};
use mlops_events::TrainingReason;
use mlops_service::{
    ApiError,
    routes::{Api, Role, Route},
};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::{
    runner::Runner,
    spec::ModelSpec,
    store::{RunRow, StoreError, TrainingStore},
};

/// Every route of the training API and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("POST", "/v1/models/specs", Role::Operator).audited("model_spec.declare"),
    Route::new("GET", "/v1/models/specs", Role::Reader),
    Route::new("GET", "/v1/models/specs/{name}", Role::Reader),
    Route::new("POST", "/v1/training-runs", Role::Operator).audited("training_run.start"),
    Route::new("GET", "/v1/training-runs", Role::Reader),
    Route::new("GET", "/v1/training-runs/{id}", Role::Reader),
];

pub struct App {
    pub store: TrainingStore,
    pub runner: Arc<Runner>,
}

/// The routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<App>> {
    Api::new(ROUTES)
        .post("/v1/models/specs", declare_spec)
        .get("/v1/models/specs", list_specs)
        .get("/v1/models/specs/{name}", get_spec)
        .post("/v1/training-runs", start_run)
        .get("/v1/training-runs", list_runs)
        .get("/v1/training-runs/{id}", get_run)
}

pub fn router(app: Arc<App>) -> Router {
    routes().into_router().with_state(app)
}

/// 503 when the database could not be reached (to be retried), 500 when what it holds
/// or was asked is wrong (retrying would not help).
fn database(e: StoreError) -> ApiError {
    match &e {
        StoreError::Database(cause) => mlops_service::database::answer(cause, "training_error"),
        StoreError::Connect(_) => ApiError::database_unavailable(e),
        StoreError::Corrupt(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "training_error",
            e.to_string(),
        ),
    }
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
    let replaced = app.store.put_spec(&spec).await.map_err(database)?;
    Ok((
        if replaced {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        Body(serde_json::to_value(&spec).unwrap_or(Json::Null)),
    ))
}

async fn list_specs(State(app): State<Arc<App>>) -> Result<Body<Json>, ApiError> {
    let specs = app.store.specs().await.map_err(database)?;
    Ok(Body(json!({ "specs": specs })))
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
    let specs = app.store.specs().await.map_err(database)?;
    let spec = specs
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| unknown_model(&name))?;
    Ok(Body(serde_json::to_value(spec).unwrap_or(Json::Null)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunRequest {
    model: String,
    /// Only labels with `window_start <= event_time < window_end` (epoch milliseconds).
    #[serde(default)]
    window_start: Option<i64>,
    #[serde(default)]
    window_end: Option<i64>,
    /// Who asks (until authentication names them).
    #[serde(default)]
    requested_by: Option<String>,
}

async fn start_run(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<(StatusCode, Body<Json>), ApiError> {
    let asked: RunRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("expected {{\"model\", \"window_start\"?, \"window_end\"?}}: {e}"),
        )
    })?;
    let specs = app.store.specs().await.map_err(database)?;
    if !specs.iter().any(|s| s.name == asked.model) {
        return Err(unknown_model(&asked.model));
    }
    let mut request = crate::runner::request(
        &asked.model,
        TrainingReason::Manual,
        asked.requested_by.as_deref().unwrap_or("api"),
    );
    request.window_start = asked.window_start;
    request.window_end = asked.window_end;
    let run = app.runner.request(&request).await.map_err(database)?;
    let row = app.store.run(&run).await.map_err(database)?;
    let mut body = match row {
        Some(row) => run_json(&app.store, &row).await?,
        None => json!({"id": run}),
    };
    body["request_id"] = json!(request.request_id);
    Ok((StatusCode::ACCEPTED, Body(body)))
}

/// A run as the API shows it: its full record once finished, its state and requests before.
async fn run_json(store: &TrainingStore, row: &RunRow) -> Result<Json, ApiError> {
    if let Some(record) = &row.record {
        return Ok(record.clone());
    }
    let requests = store.requests(&row.id).await.map_err(database)?;
    Ok(json!({
        "id": row.id,
        "model": row.model,
        "status": row.status,
        "created_at": row.created_at,
        "not_before": row.not_before,
        "started_at": row.started_at,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "request_ids": requests.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>(),
        "trace_id": row.trace_id,
    }))
}

#[derive(Debug, Deserialize)]
struct RunsQuery {
    model: Option<String>,
    limit: Option<i64>,
}

async fn list_runs(
    State(app): State<Arc<App>>,
    Query(query): Query<RunsQuery>,
) -> Result<Body<Json>, ApiError> {
    let limit = query.limit.unwrap_or(100).clamp(1, 1000);
    let rows = app
        .store
        .runs(query.model.as_deref(), limit)
        .await
        .map_err(database)?;
    let mut runs = Vec::with_capacity(rows.len());
    for row in &rows {
        runs.push(run_json(&app.store, row).await?);
    }
    Ok(Body(json!({ "runs": runs })))
}

async fn get_run(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Body<Json>, ApiError> {
    let row = app.store.run(&id).await.map_err(database)?.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_run",
            format!("no training run {id:?}"),
        )
    })?;
    run_json(&app.store, &row).await.map(Body)
}
