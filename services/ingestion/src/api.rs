//! The producers' HTTP API: `POST/GET /v1/datasets`, `GET /v1/datasets/{name}` and
//! `POST /v1/datasets/{name}/events`. Every refusal is a JSON body naming the field and the
//! reason; a 2xx is never returned for an event the broker has not acknowledged.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
};

use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
};
use mlops_events::topics;
use mlops_kafka::{DeadLetters, KafkaConfig, Producer, TopicSpec, ensure_topics};
use mlops_runtime::series::SeriesCache;
use mlops_schema::{RegistryError, SchemaRegistry, json::FieldError};
pub use mlops_service::ApiError;
use mlops_service::routes::{Api, Role, Route};
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use tokio::sync::Semaphore;

use crate::{
    Settings,
    dataset::{Dataset, DatasetSpec, check_spec},
    store::Store,
};

mod in_doubt;
mod ingest;
mod labels;
mod recovery;

type Labels = Vec<(String, String)>;

/// Shared state of the API.
pub struct App {
    pub(crate) settings: Settings,
    pub(crate) store: Store,
    pub(crate) producer: Producer,
    pub(crate) kafka: KafkaConfig,
    pub(crate) schema_registry: SchemaRegistry,
    /// Refused records go to `raw.<dataset>.dlq` through it.
    pub(crate) dead_letters: DeadLetters,
    pub(crate) datasets: RwLock<HashMap<String, Arc<Dataset>>>,
    pub(crate) in_flight: Arc<Semaphore>,
    /// Events whose produce got no verdict (timed out), checked when they come again.
    pub(crate) in_doubt: in_doubt::InDoubt,
    /// Whether the last run's accepted ids are read back: events wait for it.
    pub(crate) recovery: recovery::Recovery,
    /// Request bodies being read or worked on, in KiB (`max_body_bytes_in_flight`).
    body_kib_in_flight: Arc<Semaphore>,
    events: Family<Labels, Counter>,
    /// `events`' series by dataset and outcome.
    event_series: SeriesCache<&'static str, Counter>,
    rejections: Family<Labels, Counter>,
}

impl App {
    pub(crate) fn new(
        settings: Settings,
        store: Store,
        producer: Producer,
        kafka: KafkaConfig,
        schema_registry: SchemaRegistry,
        registry: &mut Registry,
    ) -> Self {
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "mlops_ingestion_events",
            "Events by dataset and outcome (accepted, duplicate, rejected, failed)",
            events.clone(),
        );
        let rejections = Family::<Labels, Counter>::default();
        // Exported at zero from the start, so a rate over it (the alert) has a series.
        drop(rejections.get_or_create(&vec![("reason".to_owned(), "invalid_record".to_owned())]));
        registry.register(
            "mlops_ingestion_rejections",
            "Refused events and requests, by reason",
            rejections.clone(),
        );
        Self {
            dead_letters: DeadLetters::without_group(&kafka, producer.clone()),
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            in_doubt: Default::default(),
            recovery: Default::default(),
            body_kib_in_flight: Arc::new(Semaphore::new(
                settings.max_body_bytes_in_flight.div_ceil(1024),
            )),
            settings,
            store,
            producer,
            kafka,
            schema_registry,
            datasets: RwLock::new(HashMap::new()),
            events,
            event_series: SeriesCache::default(),
            rejections,
        }
    }

    fn count(&self, dataset: &str, outcome: &'static str, n: usize) {
        if n == 0 {
            return;
        }
        self.event_series
            .get(dataset, outcome, || {
                self.events
                    .get_or_create(&vec![
                        ("dataset".to_owned(), dataset.to_owned()),
                        ("outcome".to_owned(), outcome.to_owned()),
                    ])
                    .clone()
            })
            .inc_by(n as u64);
    }

    /// The start (ms) of the idempotency window: ids accepted since are remembered.
    fn window_start(&self) -> i64 {
        mlops_events::now_millis() - (self.settings.idempotency_window_secs as i64) * 1000
    }

    fn reject(&self, reason: &str, n: usize) {
        if n == 0 {
            return;
        }
        self.rejections
            .get_or_create(&vec![("reason".to_owned(), reason.to_owned())])
            .inc_by(n as u64);
    }

    fn dataset(&self, name: &str) -> Option<Arc<Dataset>> {
        self.datasets
            .read()
            .expect("datasets lock")
            .get(name)
            .cloned()
    }

    /// Loads every stored dataset into memory (at start).
    pub(crate) async fn load(&self) -> anyhow::Result<()> {
        for (spec, schema_id, version) in self.store.datasets().await? {
            let name = spec.name.clone();
            let dataset = Dataset::new(spec, schema_id, version)
                .map_err(|e| anyhow::anyhow!("stored dataset {name} is invalid: {e:?}"))?;
            self.datasets
                .write()
                .expect("datasets lock")
                .insert(name, Arc::new(dataset));
        }
        Ok(())
    }
}

/// Every route of the ingestion API and the role it requires.
pub const ROUTES: &[Route] = &[
    Route::new("POST", "/v1/datasets", Role::Operator).audited("dataset.register"),
    Route::new("GET", "/v1/datasets", Role::Reader),
    Route::new("GET", "/v1/datasets/{name}", Role::Reader),
    Route::new("POST", "/v1/datasets/{name}/events", Role::Producer),
    Route::new("POST", "/v1/datasets/{name}/labels", Role::Producer),
    // GDPR erasure: forgets one entity everywhere the platform keeps it.
    Route::new(
        "DELETE",
        "/v1/datasets/{name}/entities/{id}",
        Role::Operator,
    )
    .audited("dataset.erase_entity"),
];

/// The routes, each checked against [`ROUTES`].
pub fn routes() -> Api<Arc<App>> {
    Api::new(ROUTES)
        .post("/v1/datasets", register_dataset)
        .get("/v1/datasets", list_datasets)
        .get("/v1/datasets/{name}", get_dataset)
        .post("/v1/datasets/{name}/events", post_events)
        .post("/v1/datasets/{name}/labels", labels::post_labels)
        .delete("/v1/datasets/{name}/entities/{id}", erase_entity)
}

pub fn router(app: Arc<App>) -> Router {
    routes()
        .into_router()
        // Bodies are read with our own limit, to answer 413 in the API's error format.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

fn dataset_body(dataset: &Dataset) -> axum::Json<Json> {
    let topic = dataset.topic();
    axum::Json(json!({
        "name": dataset.spec.name,
        "topic": topic,
        "dlq_topic": topics::dead_letter(topic),
        "subject": topics::value_subject(topic),
        "schema_id": dataset.schema_id,
        "version": dataset.version,
        "key": dataset.spec.key,
        "event_time": dataset.spec.event_time,
        "event_id": dataset.spec.event_id,
        "labels": dataset.spec.labels,
        "partitions": dataset.spec.partitions,
        "region": dataset.spec.region,
        "rules": dataset.spec.rules,
        "schema": dataset.spec.schema,
    }))
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is larger than {limit} bytes"),
        )
    })
}

fn check_region(app: &App, region: Option<&str>) -> Result<(), ApiError> {
    match (region, app.settings.region.as_deref()) {
        (Some(wanted), Some(here)) if wanted != here => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_region",
            format!(
                "dataset data must stay in region {wanted:?}; this instance serves region {here:?}"
            ),
        )),
        (Some(wanted), None) => Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_region",
            format!(
                "dataset data must stay in region {wanted:?}; this instance has no region configured"
            ),
        )),
        _ => Ok(()),
    }
}

async fn register_dataset(State(app): State<Arc<App>>, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(body, app.settings.max_body_bytes).await?;
    let spec: DatasetSpec = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("dataset declaration: {e}"),
        )
    })?;
    let schema = check_spec(&spec).map_err(|fields| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_dataset",
            "the dataset declaration is invalid",
        )
        .with_fields(fields)
    })?;
    check_region(&app, spec.region.as_deref())?;
    let topic = topics::raw(&spec.name);
    let subject = topics::value_subject(&topic);
    let (schema_id, version) = register_schema(&app, &subject, &spec.schema).await?;

    let mut raw = TopicSpec::new(&topic, spec.partitions);
    if let Some(retention) = spec.retention_ms {
        raw = raw.with("retention.ms", &retention.to_string());
    }
    ensure_topics(
        &app.kafka,
        &[
            raw,
            TopicSpec::new(topics::dead_letter(&topic), spec.partitions),
        ],
    )
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "broker_unavailable",
            e.to_string(),
        )
    })?;

    let previous = app.dataset(&spec.name);
    let dataset = Dataset::from_checked(spec.clone(), schema, schema_id, version);
    app.store
        .save_dataset(&spec, schema_id, version)
        .await
        .map_err(database)?;
    let dataset = Arc::new(dataset);
    app.datasets
        .write()
        .expect("datasets lock")
        .insert(spec.name.clone(), dataset.clone());
    let created = previous.is_none_or(|p| p.version != version);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, dataset_body(&dataset)).into_response())
}

/// Registers the schema under the dataset's subject; the registry's compatibility check
/// decides whether a new version is allowed.
async fn register_schema(app: &App, subject: &str, schema: &Json) -> Result<(u32, i64), ApiError> {
    let text = schema.to_string();
    let refused = |e: RegistryError| match e {
        RegistryError::Incompatible(message) => {
            ApiError::new(StatusCode::CONFLICT, "incompatible_schema", message)
        }
        RegistryError::Invalid(message) => ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_schema",
            message.clone(),
        )
        .with_fields(vec![FieldError {
            field: "schema".into(),
            reason: message,
        }]),
        other => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schema_registry_unavailable",
            other.to_string(),
        )
        .retry_after(5),
    };
    let id = app
        .schema_registry
        .register(subject, &text)
        .await
        .map_err(refused)?;
    let registered = app
        .schema_registry
        .lookup(subject, &text)
        .await
        .map_err(refused)?;
    Ok((id, i64::from(registered.version)))
}

async fn list_datasets(State(app): State<Arc<App>>) -> axum::Json<Json> {
    let datasets = app.datasets.read().expect("datasets lock").clone();
    let mut names: Vec<&String> = datasets.keys().collect();
    names.sort();
    axum::Json(json!(
        names
            .into_iter()
            .map(|n| dataset_body(&datasets[n]).0)
            .collect::<Vec<_>>()
    ))
}

async fn get_dataset(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
) -> Result<axum::Json<Json>, ApiError> {
    app.dataset(&name)
        .map(|d| dataset_body(&d))
        .ok_or_else(|| unknown_dataset(&name))
}

/// `DELETE /v1/datasets/{name}/entities/{id}`: a tombstone for the entity on the dataset's
/// raw topic (after the entity's events: same key, same partition). The feature service
/// then drops it from the online store and from every training set built afterwards;
/// 202 once the broker has the tombstone.
async fn erase_entity(
    State(app): State<Arc<App>>,
    Path((name, id)): Path<(String, String)>,
) -> Result<(StatusCode, axum::Json<Json>), ApiError> {
    let dataset = app.dataset(&name).ok_or_else(|| unknown_dataset(&name))?;
    let topic = dataset.topic();
    let delivery = app
        .producer
        .send_tombstone(topic, id.as_bytes())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!("the erasure was not recorded: {e}"),
            )
            .retry_after(1)
        })?;
    Ok((
        StatusCode::ACCEPTED,
        axum::Json(json!({
            "dataset": name,
            "entity_id": id,
            "topic": topic,
            "partition": delivery.partition,
            "offset": delivery.offset,
            "status": "erasing",
        })),
    ))
}

/// 503 when the database could not be reached (to be retried), 500 `ingestion_error` when
/// what it holds or was asked is wrong (retrying would not help).
fn database(e: crate::store::StoreError) -> ApiError {
    use crate::store::StoreError;
    match &e {
        StoreError::Database(cause) => mlops_service::database::answer(cause, "ingestion_error"),
        StoreError::Connect(_) => ApiError::database_unavailable(e),
        StoreError::Corrupt(..) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "ingestion_error",
            e.to_string(),
        ),
    }
}

fn unknown_dataset(name: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "unknown_dataset",
        format!("no dataset named {name:?}"),
    )
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    /// All-or-nothing for this request: one bad record refuses the whole batch.
    atomic: Option<bool>,
}

async fn post_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<EventsQuery>,
    // The request itself rather than a `HeaderMap` extractor, which copies every header.
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let result = ingest::ingest(&app, &name, query.atomic, &parts.headers, body).await;
    if let Err(e) = &result {
        app.reject(e.code, 1);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    #[test]
    fn an_unreachable_database_is_503_and_a_corrupt_row_is_500() {
        let unreachable = database(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(unreachable.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(unreachable.code, "database_unavailable");
        let corrupt = database(StoreError::Corrupt(
            "payments".into(),
            serde_json::from_str::<Json>("{").unwrap_err(),
        ));
        assert_eq!(corrupt.status, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(corrupt.code, "ingestion_error");
    }
}
