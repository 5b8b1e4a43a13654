//! The model registry's REST API: models and versions, artifact download, stage
//! transitions, rollback, history, lineage, and the public key artifacts are signed with.
//! Every change answers once it is committed; its lifecycle event follows from the outbox.

use std::sync::Arc;

use axum::{
    Json as Body, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};
use mlops_events::ModelStage as Stage;
use mlops_ml::{ModelArtifact, Signer};
use mlops_service::{
    ApiError,
    routes::{Api, Role, Route},
};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path as ObjectPath};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::Notify;

use super::{
    rules::{Refusal, parse_stage, stage_name},
    store::{
        Cause, LineageRecord, ModelStore, ModelStoreError, NewVersion, Registered, TransitionRow,
        VersionRow, state_at,
    },
};

/// Every route of the model registry and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("GET", "/v1/signing-key", Role::Reader),
    Route::new("GET", "/v1/models", Role::Reader),
    Route::new("GET", "/v1/models/{name}", Role::Reader),
    // `POST /v1/models/{name}:rollback`: served by the `{name}` route, which reads the verb.
    Route::new("POST", "/v1/models/{name}:rollback", Role::Approver).audited("model.rollback"),
    Route::new("GET", "/v1/models/{name}/history", Role::Reader),
    Route::new("GET", "/v1/models/{name}/versions", Role::Reader),
    Route::new("POST", "/v1/models/{name}/versions", Role::Operator).audited("model.register"),
    Route::new("GET", "/v1/models/{name}/versions/{version}", Role::Reader),
    Route::new(
        "GET",
        "/v1/models/{name}/versions/{version}/artifact",
        Role::Reader,
    ),
    Route::new(
        "GET",
        "/v1/models/{name}/versions/{version}/lineage",
        Role::Reader,
    ),
    Route::new(
        "POST",
        "/v1/models/{name}/versions/{version}/transitions",
        Role::Approver,
    )
    .audited("model.transition"),
];

pub struct Models {
    pub store: ModelStore,
    pub objects: Arc<dyn ObjectStore>,
    /// The artifact store's URL, prefix of every artifact URI.
    pub artifacts_url: String,
    pub signer: Signer,
    pub wake: Arc<Notify>,
    /// Share of traffic a new version gets when it enters canary.
    pub first_canary_percent: f64,
    /// Largest registration body.
    pub max_artifact_bytes: usize,
    /// Encrypts artifacts at rest when set.
    pub sealer: Option<Arc<mlops_service::sealing::Sealer>>,
}

/// The routes, each checked against [`ROUTES`]; registrations may carry artifacts of up
/// to `max_artifact_bytes`.
pub fn routes(max_artifact_bytes: usize) -> Api<Arc<Models>> {
    let registration_limit = DefaultBodyLimit::max(max_artifact_bytes);
    Api::new(ROUTES)
        .get("/v1/signing-key", signing_key)
        .get("/v1/models", list_models)
        .get("/v1/models/{name}", get_model)
        .post_verbs("/v1/models/{name}", &["rollback"], model_verb)
        .get("/v1/models/{name}/history", history)
        .get("/v1/models/{name}/versions", list_versions)
        .route(
            "POST",
            "/v1/models/{name}/versions",
            axum::routing::post(register).layer(registration_limit),
        )
        .get("/v1/models/{name}/versions/{version}", get_version)
        .get("/v1/models/{name}/versions/{version}/artifact", artifact)
        .get("/v1/models/{name}/versions/{version}/lineage", lineage)
        .post(
            "/v1/models/{name}/versions/{version}/transitions",
            transition,
        )
}

pub fn router(models: Arc<Models>) -> Router {
    routes(models.max_artifact_bytes)
        .into_router()
        .with_state(models)
}

fn error(e: ModelStoreError) -> ApiError {
    match e {
        ModelStoreError::UnknownModel(model) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_model",
            format!("no model named {model:?}"),
        ),
        ModelStoreError::Refused(refusal @ Refusal::UnknownVersion { .. }) => ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_version",
            refusal.to_string(),
        ),
        ModelStoreError::Refused(Refusal::Rule(rule)) => {
            ApiError::new(StatusCode::CONFLICT, "illegal_transition", rule)
        }
        ModelStoreError::Refused(Refusal::Invalid { field, reason }) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("{field}: {reason}"),
        )
        .with_fields(vec![field_error(field, &reason)]),
        ModelStoreError::Database(e) => mlops_service::database::answer(&e, "registry_error"),
        other => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "registry_error",
            other.to_string(),
        ),
    }
}

fn field_error(field: &str, reason: &str) -> mlops_schema::json::FieldError {
    mlops_schema::json::FieldError {
        field: field.to_owned(),
        reason: reason.to_owned(),
    }
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
        format!("{field}: {reason}"),
    )
    .with_fields(vec![field_error(field, &reason)])
}

/// Milliseconds since the epoch as RFC 3339 (UTC, milliseconds).
pub fn rfc3339(millis: i64) -> String {
    chrono::DateTime::from_timestamp_millis(millis)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

fn version_json(v: &VersionRow) -> Json {
    let mut body = serde_json::to_value(v).unwrap_or(Json::Null);
    body["created_at"] = json!(rfc3339(v.created_at));
    body
}

fn transition_json(t: &TransitionRow) -> Json {
    let mut body = serde_json::to_value(t).unwrap_or(Json::Null);
    body["at"] = json!(rfc3339(t.at));
    body
}

async fn signing_key(State(models): State<Arc<Models>>) -> Body<Json> {
    let key = models.signer.verifying_key();
    Body(json!({
        "algorithm": "ed25519",
        "key_id": mlops_ml::artifact::key_id(&key),
        "public_key": hex::encode(key.as_bytes()),
    }))
}

async fn list_models(State(models): State<Arc<Models>>) -> Result<Body<Json>, ApiError> {
    let mut out = Vec::new();
    for name in models.store.models().await.map_err(error)? {
        out.push(model_summary(&models, &name).await?);
    }
    Ok(Body(json!({ "models": out })))
}

async fn model_summary(models: &Models, name: &str) -> Result<Json, ApiError> {
    let versions = models.store.versions(name).await.map_err(error)?;
    let in_stage = |stage: Stage| versions.iter().find(|v| v.stage == stage);
    let (last, published) = models.store.outbox(name).await.map_err(error)?;
    Ok(json!({
        "name": name,
        "latest_version": versions.last().map(|v| v.version),
        "production": in_stage(Stage::Production).map(|v| v.version),
        "canary": in_stage(Stage::Canary).map(|v| json!({"version": v.version, "percent": v.canary_percent})),
        "versions": versions.len(),
        // How far models.lifecycle has caught up with this model's changes.
        "lifecycle": {"last_sequence": last, "published_sequence": published},
    }))
}

async fn get_model(
    State(models): State<Arc<Models>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, ApiError> {
    model_summary(&models, &name).await.map(Body)
}

async fn list_versions(
    State(models): State<Arc<Models>>,
    Path(name): Path<String>,
) -> Result<Body<Json>, ApiError> {
    let versions = models.store.versions(&name).await.map_err(error)?;
    Ok(Body(
        json!({ "versions": versions.iter().map(version_json).collect::<Vec<_>>() }),
    ))
}

fn version_number(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>()
        .ok()
        .filter(|v| *v > 0)
        .ok_or_else(|| invalid("version", format!("{text:?} is not a version number")))
}

async fn get_version(
    State(models): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Body<Json>, ApiError> {
    let v = models
        .store
        .version(&name, version_number(&version)?)
        .await
        .map_err(error)?;
    Ok(Body(version_json(&v)))
}

/// The stored artifact, verified against the registry's key before it is handed out, so
/// a tampered file is refused here too, naming what did not match.
async fn artifact(
    State(models): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let v = models
        .store
        .version(&name, version_number(&version)?)
        .await
        .map_err(error)?;
    let bytes = models
        .objects
        .get(&ObjectPath::from(object_name(&v.sha256)))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "artifact_unavailable",
                e.to_string(),
            )
        })?
        .bytes()
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "artifact_unavailable",
                e.to_string(),
            )
        })?;
    let bytes = match &models.sealer {
        Some(sealer) => sealer.open(&bytes).map(axum::body::Bytes::from),
        None if mlops_service::sealing::Sealer::is_sealed(&bytes) => Err(
            "the artifact is encrypted, and the registry has no keys (encryption.keys_file)"
                .to_owned(),
        ),
        None => Ok(bytes),
    }
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "artifact_unreadable", e))?;
    let opened = mlops_ml::artifact::open(&bytes, &models.signer.verifying_key());
    if let Err(e) = opened {
        return Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "artifact_integrity",
            format!(
                "the stored artifact of {name} version {} is refused: {e}",
                v.version
            ),
        ));
    }
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (
                header::HeaderName::from_static("x-artifact-sha256"),
                v.sha256.clone(),
            ),
        ],
        bytes,
    )
        .into_response())
}

async fn lineage(
    State(models): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
) -> Result<Body<Json>, ApiError> {
    let v = models
        .store
        .version(&name, version_number(&version)?)
        .await
        .map_err(error)?;
    let l = &v.lineage;
    Ok(Body(json!({
        "model": v.model,
        "version": v.version,
        "training_run_id": l.training_run_id,
        "snapshot_id": l.snapshot_id,
        "feature_view": l.feature_view,
        "feature_view_version": l.feature_view_version,
        "schema_ids": l.schema_ids,
        "code_version": l.code_version,
        "artifact_sha256": v.sha256,
        "trigger": {
            "request_ids": l.request_ids,
            "event_ids": l.triggering_event_ids,
        },
    })))
}

#[derive(Debug, Deserialize)]
struct HistoryQuery {
    at: Option<String>,
}

async fn history(
    State(models): State<Arc<Models>>,
    Path(name): Path<String>,
    Query(query): Query<HistoryQuery>,
) -> Result<Body<Json>, ApiError> {
    let history = models.store.history(&name).await.map_err(error)?;
    let Some(at) = query.at else {
        return Ok(Body(json!({
            "model": name,
            "transitions": history.iter().map(transition_json).collect::<Vec<_>>(),
        })));
    };
    let instant = chrono::DateTime::parse_from_rfc3339(&at)
        .map_err(|e| invalid("at", format!("{at:?} is not an RFC 3339 time: {e}")))?
        .timestamp_millis();
    let (production, canary) = state_at(&history, instant);
    Ok(Body(json!({
        "model": name,
        "at": rfc3339(instant),
        "production": production,
        "canary": canary.map(|(version, percent)| json!({"version": version, "percent": percent})),
    })))
}

/// Where artifacts live in the store: by their SHA-256, so a version's bytes never change.
fn object_name(sha256: &str) -> String {
    format!("{sha256}.mlart")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Registration {
    artifact: ModelArtifact,
    #[serde(default)]
    lineage: LineageRecord,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    /// Move the version on by the deployment rule (production first, then canary). Default.
    #[serde(default = "yes")]
    deploy: bool,
    /// Share of traffic in canary, when it goes there (default: the registry's first step).
    #[serde(default)]
    canary_percent: Option<f64>,
    #[serde(default)]
    trace_id: Option<String>,
}

fn yes() -> bool {
    true
}

/// Registers a trained model: seals its artifact with the registry's key, stores it by
/// SHA-256, records the version and its first transitions in one transaction.
async fn register(
    State(models): State<Arc<Models>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Body<Json>), ApiError> {
    // The name becomes topic names (`predictions.<name>`), which consumers select by the
    // dataset-name rule: a name outside it would be served but never monitored.
    if let Err(reason) = mlops_events::topics::check_dataset_name(&name) {
        return Err(invalid(
            "name",
            format!("not a model name: {reason}; it names the topic predictions.<name>"),
        ));
    }
    let registration: Registration = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("not a registration: {e}"),
        )
    })?;
    if registration.artifact.model_name != name {
        return Err(invalid(
            "artifact.model_name",
            format!(
                "{:?} is not the model {name:?} of the path",
                registration.artifact.model_name
            ),
        ));
    }
    if let Some(p) = registration.canary_percent
        && !(0.0..100.0).contains(&p)
    {
        return Err(invalid(
            "canary_percent",
            format!("{p} is not in [0, 100): 0 is a shadow, 100 a promotion"),
        ));
    }
    let mlops_ml::artifact::Sealed {
        bytes: sealed,
        digest: sha256,
        signature,
    } = models.signer.seal(&registration.artifact);
    // Encrypted after signing: the digest and signature are of the artifact itself.
    let stored = match &models.sealer {
        Some(sealer) => sealer.seal(&sealed).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "encryption_failed", e)
        })?,
        None => sealed,
    };
    models
        .objects
        .put(
            &ObjectPath::from(object_name(&sha256)),
            PutPayload::from(stored),
        )
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "artifact_store_unavailable",
                e.to_string(),
            )
        })?;
    let cause = Cause {
        reason: registration
            .reason
            .unwrap_or_else(|| "registered".to_owned()),
        actor: registration.actor.unwrap_or_else(|| "unknown".to_owned()),
        triggering_event_id: registration.lineage.triggering_event_ids.first().cloned(),
        trace_id: registration.trace_id,
    };
    let new = NewVersion {
        artifact_uri: format!(
            "{}/{}",
            models.artifacts_url.trim_end_matches('/'),
            object_name(&sha256)
        ),
        sha256,
        signature,
        metrics: registration.artifact.metrics.clone(),
        lineage: registration.lineage,
    };
    let deploy = registration.deploy.then(|| {
        registration
            .canary_percent
            .unwrap_or(models.first_canary_percent)
    });
    let registered = models
        .store
        .register(&name, new, deploy, &cause)
        .await
        .map_err(error)?;
    let status = match registered {
        Registered::New(_) => {
            models.wake.notify_one();
            StatusCode::CREATED
        }
        // The same training run registering again (a retry): its version, unchanged.
        Registered::Existing(_) => StatusCode::OK,
    };
    let v = models
        .store
        .version(&name, registered.version())
        .await
        .map_err(error)?;
    Ok((status, Body(version_json(&v))))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransitionRequest {
    stage: String,
    #[serde(default)]
    canary_percent: Option<f64>,
    reason: Option<String>,
    actor: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
}

fn required(value: Option<String>, field: &str) -> Result<String, ApiError> {
    value
        .filter(|v| !v.trim().is_empty())
        .ok_or_else(|| invalid(field, "required: say it for the history"))
}

async fn transition(
    State(models): State<Arc<Models>>,
    Path((name, version)): Path<(String, String)>,
    body: Bytes,
) -> Result<Body<Json>, ApiError> {
    let version = version_number(&version)?;
    let request: TransitionRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
            format!("expected {{\"stage\", \"canary_percent\"?, \"reason\", \"actor\"}}: {e}"),
        )
    })?;
    let stage = parse_stage(&request.stage).ok_or_else(|| {
        invalid(
            "stage",
            format!(
                "{:?} is not one of candidate, canary, production, archived",
                request.stage
            ),
        )
    })?;
    let cause = Cause {
        reason: required(request.reason, "reason")?,
        actor: required(request.actor, "actor")?,
        triggering_event_id: None,
        trace_id: request.trace_id,
    };
    let rows = models
        .store
        .transition(&name, version, stage, request.canary_percent, &cause)
        .await
        .map_err(error)?;
    models.wake.notify_one();
    Ok(Body(json!({
        "model": name,
        "version": version,
        "stage": stage_name(stage),
        "transitions": rows.iter().map(transition_json).collect::<Vec<_>>(),
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    reason: Option<String>,
    actor: Option<String>,
}

/// `POST /v1/models/{name}:rollback` (the only verb on a model so far).
async fn model_verb(
    State(models): State<Arc<Models>>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Body<Json>, ApiError> {
    let Some(model) = name.strip_suffix(":rollback") else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_verb",
            format!("POST /v1/models/{name}: the model verbs are :rollback"),
        ));
    };
    let request: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_request",
                format!("expected {{\"reason\", \"actor\"}}: {e}"),
            )
        })?
    };
    let cause = Cause {
        reason: request.reason.unwrap_or_else(|| "rollback".to_owned()),
        actor: request.actor.unwrap_or_else(|| "unknown".to_owned()),
        triggering_event_id: None,
        trace_id: None,
    };
    let rows = models.store.rollback(model, &cause).await.map_err(error)?;
    models.wake.notify_one();
    let restored = rows.first().map(|t| t.version);
    Ok(Body(json!({
        "model": model,
        "production": restored,
        "transitions": rows.iter().map(transition_json).collect::<Vec<_>>(),
    })))
}
