//! The feature service's HTTP API: feature views, online lookups, training sets.

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::Schema;
use axum::{
    Router,
    body::Bytes,
    extract::{Path, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use mlops_kafka::{KafkaConfig, Producer, TopicSpec, ensure_topics};
use mlops_runtime::Supervisor;
use mlops_schema::{AvroCodec, RegistryError, SchemaRegistry, json::FieldError};
use mlops_service::{
    ApiError,
    routes::{Api, Role, Route},
};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::{
    catalog::{Catalog, ViewVersion},
    online::OnlineStore,
    spec::FeatureViewSpec,
    store::FeatureStore,
    stream::{self, StreamSettings},
    training::{self, TrainingSetError, TrainingSetRequest},
    views::{DeclareError, ViewJob, build_version, job_name},
};

/// Shared state of the API and the stream jobs it starts.
pub struct App {
    pub store: FeatureStore,
    pub catalog: Catalog,
    pub online: Arc<OnlineStore>,
    pub codec: Arc<AvroCodec>,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistry,
    pub stream: StreamSettings,
    pub feature_partitions: i32,
    /// Running view jobs: view → (version, stop token).
    pub jobs: Mutex<HashMap<String, (i32, CancellationToken)>>,
    /// Runs the view jobs, restarts them after failures and panics, reports their state.
    pub supervisor: Supervisor,
    pub cancel: CancellationToken,
    /// Residency region of this service: records of another region are not handled.
    pub region: Option<String>,
    pub limits: Limits,
}

/// What one declaration or request may ask of this service (`feature.max_window`,
/// `feature.max_lookup_ids`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_window_ms: i64,
    pub max_lookup_ids: usize,
    pub training_set_catch_up: Duration,
}

impl Default for Limits {
    /// The service's defaults: 90 days of history, 10,000 ids per lookup.
    fn default() -> Self {
        Self {
            max_window_ms: 90 * 86_400_000,
            max_lookup_ids: 10_000,
            training_set_catch_up: Duration::from_secs(30),
        }
    }
}

impl Limits {
    /// Each aggregation whose window, with the view's allowed lateness, is longer than
    /// this service keeps history for.
    fn refuse(&self, spec: &FeatureViewSpec) -> Vec<FieldError> {
        let lateness = spec.lateness_ms();
        spec.aggregations
            .iter()
            .enumerate()
            .filter_map(|(i, aggregation)| {
                let window = mlops_service::parse_duration(&aggregation.window).ok()?;
                (window.saturating_add(lateness) > self.max_window_ms).then(|| FieldError {
                    field: format!("aggregations[{i}].window"),
                    reason: format!(
                        "{} plus the allowed lateness {} is longer than the {} of history this \
                         service keeps per entity in memory (feature.max_window)",
                        aggregation.window,
                        spec.allowed_lateness,
                        human(self.max_window_ms)
                    ),
                })
            })
            .collect()
    }
}

/// A duration in the largest whole unit.
fn human(ms: i64) -> String {
    for (unit, size) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms % size == 0 {
            return format!("{}{unit}", ms / size);
        }
    }
    format!("{ms}ms")
}

impl App {
    /// Registers `spec` (a new version when it differs from the latest) and makes sure its
    /// stream job runs.
    pub async fn declare(
        &self,
        spec: FeatureViewSpec,
    ) -> Result<(ViewVersion, bool), DeclareError> {
        spec.check().map_err(DeclareError::Invalid)?;
        let refused = self.limits.refuse(&spec);
        if !refused.is_empty() {
            return Err(DeclareError::Invalid(refused));
        }
        let source_schema = self.source_schema(&spec.source).await?;
        let (version, created) = self
            .catalog
            .declare(spec, |spec, number| async move {
                let (mut version, _) = build_version(spec, number, &source_schema)?;
                version.schema_id = self.register_schema(&version).await?;
                Ok::<_, DeclareError>(version)
            })
            .await?;
        ensure_topics(
            &self.kafka,
            &[TopicSpec::new(version.topic(), self.feature_partitions)],
        )
        .await
        .map_err(|e| DeclareError::Unavailable(e.to_string()))?;
        self.start(version.clone()).await;
        Ok((version, created))
    }

    /// Starts the stream job of `version`, stopping an older version's job of that view.
    pub async fn start(&self, version: ViewVersion) {
        let mut jobs = self.jobs.lock().await;
        if let Some((running, token)) = jobs.get(&version.name) {
            if *running >= version.version {
                return;
            }
            token.cancel();
        }
        let token = self.cancel.child_token();
        let name = version.name.clone();
        let number = version.version;
        let wiring = stream::Wiring {
            store: self.store.clone(),
            kafka: self.kafka.clone(),
            group: version.group(),
            topics: vec![mlops_events::topics::raw(&version.spec.source)],
            dead_letters: self.producer.clone(),
            settings: self.stream.clone(),
        };
        let version = Arc::new(version);
        let (codec, producer, online, region) = (
            self.codec.clone(),
            self.producer.clone(),
            self.online.clone(),
            self.region.clone(),
        );
        let cancel = token.clone();
        info!(view = %name, version = number, "starting the view's stream job");
        // Every attempt builds its job afresh and resumes from the checkpoint; a job that
        // cannot be built shows as failing, with the reason, in the view's status.
        self.supervisor
            .spawn(job_name(&name, number), token.clone(), move |reporter| {
                let job = ViewJob::new(
                    version.clone(),
                    codec.clone(),
                    producer.clone(),
                    online.clone(),
                )
                .map(|job| job.in_region(region.clone()));
                let (wiring, cancel) = (wiring.clone(), cancel.clone());
                async move {
                    let job = job.map_err(|e| anyhow::anyhow!("the view cannot run: {e}"))?;
                    stream::run(job, wiring, cancel, reporter).await
                }
            });
        jobs.insert(name, (number, token));
    }

    async fn source_schema(&self, dataset: &str) -> Result<Schema, DeclareError> {
        let subject = mlops_events::topics::value_subject(&mlops_events::topics::raw(dataset));
        let latest = self
            .schema_registry
            .latest(&subject)
            .await
            .map_err(|e| match e {
                RegistryError::NotFound(_) => DeclareError::UnknownSource(format!(
                    "dataset {dataset:?} has no schema under {subject}; declare the dataset first"
                )),
                other => DeclareError::Unavailable(other.to_string()),
            })?;
        Schema::parse_str(&latest.schema)
            .map_err(|e| DeclareError::Unavailable(format!("schema of {subject}: {e}")))
    }

    async fn register_schema(&self, version: &ViewVersion) -> Result<u32, DeclareError> {
        let subject = mlops_events::topics::value_subject(&version.topic());
        self.schema_registry
            .register(&subject, &version.schema.to_string())
            .await
            .map_err(|e| match e {
                RegistryError::Incompatible(message) => DeclareError::Incompatible(message),
                other => DeclareError::Unavailable(other.to_string()),
            })
    }
}

impl From<DeclareError> for ApiError {
    fn from(e: DeclareError) -> Self {
        match e {
            DeclareError::Invalid(fields) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_feature_view",
                fields
                    .iter()
                    .map(|f| format!("{}: {}", f.field, f.reason))
                    .collect::<Vec<_>>()
                    .join("; "),
            )
            .with_fields(fields),
            DeclareError::UnknownSource(message) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_source",
                message.clone(),
            )
            .with_fields(vec![FieldError {
                field: "source".into(),
                reason: message,
            }]),
            DeclareError::Incompatible(message) => {
                ApiError::new(StatusCode::CONFLICT, "incompatible_feature_view", message)
            }
            DeclareError::Unavailable(message) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
            }
        }
    }
}

fn store_error(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "store_unavailable",
        e.to_string(),
    )
}

/// Every route of the feature API and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("POST", "/v1/feature-views", Role::Operator).audited("feature_view.declare"),
    Route::new("GET", "/v1/feature-views", Role::Reader),
    Route::new("GET", "/v1/feature-views/{view}", Role::Reader),
    Route::new(
        "GET",
        "/v1/feature-views/{view}/versions/{version}",
        Role::Reader,
    ),
    Route::new(
        "GET",
        "/v1/feature-views/{view}/entities/{id}",
        Role::Reader,
    ),
    Route::new(
        "POST",
        "/v1/feature-views/{view}/entities:lookup",
        Role::Reader,
    ),
    Route::new("POST", "/v1/training-sets", Role::Operator).audited("training_set.create"),
    Route::new("GET", "/v1/training-sets", Role::Reader),
    Route::new("GET", "/v1/training-sets/{id}", Role::Reader),
    Route::new("GET", "/v1/training-sets/{id}/data", Role::Reader),
];

/// The routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<App>> {
    Api::new(ROUTES)
        .post("/v1/feature-views", declare_view)
        .get("/v1/feature-views", list_views)
        .get("/v1/feature-views/{view}", get_view)
        .get(
            "/v1/feature-views/{view}/versions/{version}",
            get_view_version,
        )
        .get("/v1/feature-views/{view}/entities/{id}", get_entity)
        .post("/v1/feature-views/{view}/entities:lookup", lookup_entities)
        .post("/v1/training-sets", create_training_set)
        .get("/v1/training-sets", list_training_sets)
        .get("/v1/training-sets/{id}", get_training_set)
        .get("/v1/training-sets/{id}/data", get_training_set_data)
}

pub fn router(app: Arc<App>) -> Router {
    routes().into_router().with_state(app)
}

fn version_body(version: &ViewVersion) -> Json {
    json!({
        "name": version.name,
        "version": version.version,
        "topic": version.topic(),
        "schema_id": version.schema_id,
        "features": version.features,
        "spec": version.spec,
        "created_at": version.created_at,
    })
}

async fn declare_view(
    State(app): State<Arc<App>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let spec = if content_type.contains("toml") {
        let text = std::str::from_utf8(&body).map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                "the body is not UTF-8",
            )
        })?;
        FeatureViewSpec::from_toml(text).map_err(|fields| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                fields[0].reason.clone(),
            )
        })?
    } else if content_type.contains("json") {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("not a valid feature view: {e}"),
            )
        })?
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected application/json or application/toml, got {content_type}"),
        ));
    };
    let (version, created) = app.declare(spec).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut body = version_body(&version);
    body["created"] = json!(created);
    Ok((status, axum::Json(body)).into_response())
}

async fn list_views(State(app): State<Arc<App>>) -> Result<axum::Json<Json>, ApiError> {
    let views = app.catalog.all_latest().await.map_err(store_error)?;
    Ok(axum::Json(
        json!({"views": views.iter().map(version_body).collect::<Vec<_>>()}),
    ))
}

fn unknown_view(view: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "view_not_found",
        format!("feature view {view:?} is not declared"),
    )
}

async fn get_view(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    let versions = app.catalog.versions(&view).await.map_err(store_error)?;
    let latest = versions.last().ok_or_else(|| unknown_view(&view))?;
    let mut body = version_body(latest);
    body["versions"] = json!(versions.iter().map(|v| v.version).collect::<Vec<_>>());
    body["online_entities"] = json!(app.online.len(&view));
    body["job"] = json!(
        app.supervisor
            .status(&job_name(&latest.name, latest.version))
    );
    Ok(axum::Json(body))
}

async fn get_view_version(
    State(app): State<Arc<App>>,
    Path((view, version)): Path<(String, i32)>,
) -> Result<axum::Json<Json>, ApiError> {
    let found = app
        .catalog
        .version(&view, version)
        .await
        .map_err(store_error)?;
    let version = found.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "version_not_found",
            format!("feature view {view:?} has no version {version}"),
        )
    })?;
    Ok(axum::Json(version_body(&version)))
}

async fn ensure_view(app: &App, view: &str) -> Result<(), ApiError> {
    if app.jobs.lock().await.contains_key(view) {
        return Ok(());
    }
    match app.catalog.latest(view).await.map_err(store_error)? {
        Some(_) => Ok(()),
        None => Err(unknown_view(view)),
    }
}

async fn get_entity(
    State(app): State<Arc<App>>,
    Path((view, id)): Path<(String, String)>,
) -> Result<axum::Json<Json>, ApiError> {
    if let Some(row) = app.online.get(&view, &id) {
        let mut body = json!(*row);
        body["view"] = json!(view);
        return Ok(axum::Json(body));
    }
    ensure_view(&app, &view).await?;
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "entity_not_found",
        format!("feature view {view:?} has no features for entity {id:?}"),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LookupRequest {
    entity_ids: Vec<String>,
}

async fn lookup_entities(
    State(app): State<Arc<App>>,
    Path(view): Path<String>,
    body: Bytes,
) -> Result<axum::Json<Json>, ApiError> {
    let request: LookupRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("expected {{\"entity_ids\": [...]}}: {e}"),
        )
        .with_fields(vec![FieldError {
            field: "entity_ids".into(),
            reason: e.to_string(),
        }])
    })?;
    if request.entity_ids.len() > app.limits.max_lookup_ids {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_many_ids",
            format!(
                "{} entity ids in one lookup; at most {} (feature.max_lookup_ids)",
                request.entity_ids.len(),
                app.limits.max_lookup_ids
            ),
        )
        .with_fields(vec![FieldError {
            field: "entity_ids".into(),
            reason: format!("at most {} per lookup", app.limits.max_lookup_ids),
        }]));
    }
    ensure_view(&app, &view).await?;
    let results: Vec<Json> = request
        .entity_ids
        .iter()
        .map(|id| match app.online.get(&view, id) {
            Some(row) => {
                let mut body = json!(*row);
                body["found"] = json!(true);
                body
            }
            None => json!({"entity_id": id, "found": false}),
        })
        .collect();
    Ok(axum::Json(json!({"view": view, "results": results})))
}

async fn create_training_set(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request: TrainingSetRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("not a valid training set request: {e}"),
        )
    })?;
    let version = match request.view_version {
        Some(number) => app.catalog.version(&request.view, number).await,
        None => app.catalog.latest(&request.view).await,
    }
    .map_err(store_error)?
    .ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "view_not_found",
            format!(
                "feature view {:?}{} is not declared",
                request.view,
                request
                    .view_version
                    .map(|v| format!(" version {v}"))
                    .unwrap_or_default()
            ),
        )
    })?;
    // Read-your-writes: what was accepted before this request (events, then their labels)
    // is in the training set; a label never joins a stale row because the view lagged.
    // The labels' ends are taken first and only labels below them are used: a label sent
    // while the view catches up may grade an event past the view's ends, and would join
    // the entity's previous row — another event's features under this event's label.
    let deadline = tokio::time::Instant::now() + app.limits.training_set_catch_up;
    let labels_topic = mlops_events::topics::LABELS;
    let label_ends = stream::end_offsets(&app.kafka, labels_topic, deadline)
        .await
        .map_err(|e| catch_up_error("the labels", e))?;
    let running = app
        .jobs
        .lock()
        .await
        .get(&version.name)
        .is_some_and(|(number, _)| *number == version.version);
    if running {
        let source = mlops_events::topics::raw(&version.spec.source);
        stream::wait_caught_up(
            &app.store,
            &app.kafka,
            &version.state_prefix(),
            &source,
            deadline,
        )
        .await
        .map_err(|e| catch_up_error(&format!("feature view {:?}", version.name), e))?;
    }
    stream::wait_caught_up_to(
        &app.store,
        crate::labels::LABELS_STATE_PREFIX,
        labels_topic,
        &label_ends,
        deadline,
    )
    .await
    .map_err(|e| catch_up_error("the labels", e))?;
    let (manifest, created) = training::build(
        &app.store,
        &version,
        &request,
        &label_ends,
        app.region.as_deref(),
    )
    .await
    .map_err(|e| match e {
        TrainingSetError::NoLabels(message) => {
            ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "no_labels", message)
        }
        other => store_error(other),
    })?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, axum::Json(manifest)).into_response())
}

fn catch_up_error(what: &str, error: stream::CatchUpError) -> ApiError {
    match error {
        stream::CatchUpError::Behind { records, topic } => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_caught_up",
            format!(
                "{what} still {records} records behind {topic} (feature.training_set_catch_up \
                 elapsed); a training set built now would miss or mis-join them, retry later"
            ),
        )
        .retry_after(5),
        stream::CatchUpError::Unavailable(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            format!("cannot tell how far {what} has to read: {reason}"),
        )
        .retry_after(5),
    }
}

async fn list_training_sets(State(app): State<Arc<App>>) -> Result<axum::Json<Json>, ApiError> {
    let manifests = training::list(&app.store).await.map_err(store_error)?;
    Ok(axum::Json(json!({"training_sets": manifests})))
}

fn training_set_not_found(id: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "training_set_not_found",
        format!("no training set {id:?}"),
    )
}

/// Snapshot ids are SHA-256 hex digests; anything else names no training set.
fn snapshot_id(id: &str) -> Result<(), ApiError> {
    if id.len() == 64 && id.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(training_set_not_found(id))
    }
}

async fn get_training_set(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<axum::Json<training::Manifest>, ApiError> {
    snapshot_id(&id)?;
    app.store
        .get_json(&format!("snapshots/{id}/manifest.json"))
        .await
        .map_err(store_error)?
        .map(axum::Json)
        .ok_or_else(|| training_set_not_found(&id))
}

async fn get_training_set_data(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    snapshot_id(&id)?;
    let bytes = app
        .store
        .get(&format!("snapshots/{id}/data.parquet"))
        .await
        .map_err(store_error)?
        .ok_or_else(|| training_set_not_found(&id))?;
    Ok((
        [(header::CONTENT_TYPE, "application/vnd.apache.parquet")],
        bytes,
    )
        .into_response())
}
