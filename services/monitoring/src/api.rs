//! The monitoring reports: every model watched, and per model its versions' windows
//! (drift per feature, prediction drift, data quality, volume), performance over time, label
//! lag, the canary under analysis with its evidence so far, and recent incidents and
//! verdicts.

use std::sync::Arc;

use axum::{
    Json as Body, Router,
    extract::{Path, State},
    http::StatusCode,
};
use mlops_service::{
    ApiError,
    routes::{Api, Role, Route},
};
use serde_json::{Value as Json, json};

use crate::intake::Shared;

/// Every route of the monitoring API and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("GET", "/v1/monitoring/models", Role::Reader),
    Route::new("GET", "/v1/monitoring/models/{name}", Role::Reader),
];

/// The routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<Shared>> {
    Api::new(ROUTES)
        .get("/v1/monitoring/models", list)
        .get("/v1/monitoring/models/{name}", report)
}

pub fn router(shared: Arc<Shared>) -> Router {
    routes().into_router().with_state(shared)
}

async fn list(State(shared): State<Arc<Shared>>) -> Body<Json> {
    let names = shared
        .monitor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .model_names();
    Body(json!({ "models": names }))
}

async fn report(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, ApiError> {
    shared
        .monitor
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .report(&name)
        .map(Body)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "model_not_monitored",
                format!("no prediction or lifecycle event of a model named {name:?} was seen yet"),
            )
        })
}
