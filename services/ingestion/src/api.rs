//! The producers' HTTP API: `POST/GET /v1/datasets`, `GET /v1/datasets/{name}` and
//! `POST /v1/datasets/{name}/events`. Every refusal is a JSON body naming the field and the
//! reason; a 2xx is never returned for an event the broker has not acknowledged.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use apache_avro::writer::datum::GenericDatumWriter;
use axum::{
    Router,
    body::{Body, Bytes},
    extract::{DefaultBodyLimit, Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use mlops_events::{
    AuditOutcome, AuditRecord, Bytes as AvroBytes, DeadLetter, new_id, now_millis, topics,
};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, TopicSpec, ensure_topics};
use mlops_schema::json::FieldError;
pub use mlops_service::ApiError;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;

use crate::{
    Settings,
    dataset::{Dataset, DatasetSpec, check_spec},
    store::{Accepted, Store},
};

type Labels = Vec<(String, String)>;

/// Shared state of the API.
pub struct App {
    pub(crate) settings: Settings,
    pub(crate) store: Store,
    pub(crate) producer: Producer,
    pub(crate) kafka: KafkaConfig,
    pub(crate) registry_url: String,
    pub(crate) http: reqwest::Client,
    pub(crate) datasets: RwLock<HashMap<String, Arc<Dataset>>>,
    pub(crate) in_flight: Arc<Semaphore>,
    events: Family<Labels, Counter>,
    rejections: Family<Labels, Counter>,
}

impl App {
    pub(crate) fn new(
        settings: Settings,
        store: Store,
        producer: Producer,
        kafka: KafkaConfig,
        registry_url: String,
        registry: &mut Registry,
    ) -> Self {
        let events = Family::<Labels, Counter>::default();
        registry.register(
            "mlops_ingestion_events",
            "Events by dataset and outcome (accepted, duplicate, rejected, failed)",
            events.clone(),
        );
        let rejections = Family::<Labels, Counter>::default();
        registry.register(
            "mlops_ingestion_rejections",
            "Refused events and requests, by reason",
            rejections.clone(),
        );
        Self {
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            settings,
            store,
            producer,
            kafka,
            registry_url: registry_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            datasets: RwLock::new(HashMap::new()),
            events,
            rejections,
        }
    }

    fn count(&self, dataset: &str, outcome: &str, n: usize) {
        if n > 0 {
            self.events
                .get_or_create(&vec![
                    ("dataset".to_owned(), dataset.to_owned()),
                    ("outcome".to_owned(), outcome.to_owned()),
                ])
                .inc_by(n as u64);
        }
    }

    fn reject(&self, reason: &str, n: usize) {
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

pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/v1/datasets", post(register_dataset).get(list_datasets))
        .route("/v1/datasets/{name}", get(get_dataset))
        .route("/v1/datasets/{name}/events", post(post_events))
        // Bodies are read with our own limit, to answer 413 in the API's error format.
        .layer(DefaultBodyLimit::disable())
        .with_state(app)
}

fn dataset_body(dataset: &Dataset) -> axum::Json<Json> {
    let topic = dataset.topic();
    axum::Json(json!({
        "name": dataset.spec.name,
        "topic": topic,
        "dlq_topic": topics::dead_letter(&topic),
        "subject": topics::value_subject(&topic),
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
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "database_unavailable",
                e.to_string(),
            )
        })?;
    let dataset = Arc::new(dataset);
    app.datasets
        .write()
        .expect("datasets lock")
        .insert(spec.name.clone(), dataset.clone());
    let created = previous.is_none_or(|p| p.version != version);
    if created {
        audit(
            &app,
            "dataset.register",
            &format!("datasets/{}", spec.name),
            Some(format!("schema version {version}")),
        )
        .await;
    }
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
    let body = json!({"schema": schema.to_string()});
    let unavailable = |e: String| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "schema_registry_unavailable",
            e,
        )
    };
    let response = app
        .http
        .post(format!("{}/subjects/{subject}/versions", app.registry_url))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let status = response.status();
    let answer: Json = response
        .json()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let message = answer["message"].as_str().unwrap_or_default().to_owned();
    match status.as_u16() {
        200 => {}
        409 => {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "incompatible_schema",
                message,
            ));
        }
        422 => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_schema",
                message.clone(),
            )
            .with_fields(vec![FieldError {
                field: "schema".into(),
                reason: message,
            }]));
        }
        _ => return Err(unavailable(format!("registry answered {status}: {answer}"))),
    }
    let id = answer["id"]
        .as_u64()
        .ok_or_else(|| unavailable(format!("no id in {answer}")))? as u32;
    let found: Json = app
        .http
        .post(format!("{}/subjects/{subject}", app.registry_url))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| unavailable(e.to_string()))?
        .json()
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    let version = found["version"]
        .as_i64()
        .ok_or_else(|| unavailable(format!("no version in {found}")))?;
    Ok((id, version))
}

/// Appends an audit record; a failure is logged, never hidden from metrics or logs.
async fn audit(app: &App, action: &str, resource: &str, reason: Option<String>) {
    let occurred_at = now_millis();
    let actor = "anonymous".to_owned();
    let hash = hex::encode(Sha256::digest(
        format!("|{actor}|{action}|{resource}|success|{occurred_at}").as_bytes(),
    ));
    let record = AuditRecord {
        audit_id: new_id(),
        actor,
        role: None,
        action: action.to_owned(),
        resource: resource.to_owned(),
        outcome: AuditOutcome::Success,
        reason,
        source_ip: None,
        trace_id: mlops_telemetry::current_trace_id(),
        occurred_at,
        prev_hash: None,
        hash,
    };
    if let Err(e) = app
        .producer
        .send_event(
            topics::AUDIT_LOG,
            Some(resource.as_bytes()),
            &record,
            OwnedHeaders::new(),
        )
        .await
    {
        tracing::error!(action, resource, error = %e, "audit record not written");
    }
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

/// What happened to one record of a request.
enum Outcome {
    Accepted(Accepted),
    Duplicate(Accepted),
    Rejected(Vec<FieldError>),
    Skipped(String),
    Failed(String),
}

struct Prepared {
    index: usize,
    key: Option<String>,
    event_id: Option<String>,
    payload: Vec<u8>,
}

async fn post_events(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let result = ingest(&app, &name, query, &headers, body).await;
    if let Err(e) = &result {
        app.reject(e.code, 1);
    }
    result
}

async fn ingest(
    app: &App,
    name: &str,
    query: EventsQuery,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let dataset = app.dataset(name).ok_or_else(|| unknown_dataset(name))?;
    check_region(app, dataset.spec.region.as_deref())?;
    let ndjson = match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.starts_with("application/x-ndjson") => true,
        Some(t) if t.starts_with("application/json") => false,
        other => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_content_type",
                format!(
                    "content type {:?} is not accepted; send application/json (one object or an array) or application/x-ndjson",
                    other.unwrap_or("none")
                ),
            ));
        }
    };
    let bytes = read_body(body, app.settings.max_body_bytes).await?;
    let (single, items) = parse_records(&bytes, ndjson)?;
    let atomic = query.atomic.unwrap_or(app.settings.all_or_nothing);
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|_| single)
        .map(str::to_owned);

    let since = now_millis() - (app.settings.idempotency_window_secs as i64) * 1000;
    let mut outcomes: Vec<Option<Outcome>> = (0..items.len()).map(|_| None).collect();
    let mut prepared = Vec::new();
    let mut repeats: Vec<(usize, usize)> = Vec::new();
    let mut first_seen: HashMap<String, usize> = HashMap::new();
    let writer = GenericDatumWriter::builder(dataset.converter.schema())
        .build()
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "schema_error",
                e.to_string(),
            )
        })?;
    // Each record's event id, taken once; those accepted before are looked up for the
    // whole request at once.
    let mut event_ids: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            let record = item.as_ref().ok()?;
            dataset
                .event_id_of(record)
                .or_else(|| idempotency_key.clone())
        })
        .collect();
    let ids: Vec<&str> = event_ids.iter().flatten().map(String::as_str).collect();
    let known = app.store.accepted(name, &ids, since).await.map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            e.to_string(),
        )
    })?;
    for (index, item) in items.iter().enumerate() {
        let record = match item {
            Ok(record) => record,
            Err(reason) => {
                outcomes[index] = Some(Outcome::Rejected(vec![FieldError {
                    field: String::new(),
                    reason: reason.clone(),
                }]));
                continue;
            }
        };
        let event_id = event_ids[index].take();
        if let Some(id) = &event_id {
            if let Some(&first) = first_seen.get(id) {
                repeats.push((index, first));
                continue;
            }
            if let Some(accepted) = known.get(id) {
                outcomes[index] = Some(Outcome::Duplicate(*accepted));
                continue;
            }
            first_seen.insert(id.clone(), index);
        }
        let value = match dataset.converter.convert(record) {
            Ok(value) => value,
            Err(errors) => {
                outcomes[index] = Some(Outcome::Rejected(errors));
                continue;
            }
        };
        let violations = dataset.check_rules(record);
        if !violations.is_empty() {
            outcomes[index] = Some(Outcome::Rejected(violations));
            continue;
        }
        let payload = match writer.write_value_to_vec(value) {
            Ok(body) => mlops_schema::frame(dataset.schema_id, &body),
            Err(e) => {
                outcomes[index] = Some(Outcome::Rejected(vec![FieldError {
                    field: String::new(),
                    reason: format!("does not encode: {e}"),
                }]));
                continue;
            }
        };
        prepared.push(Prepared {
            index,
            key: dataset.key_of(record),
            event_id,
            payload,
        });
    }

    let rejected: Vec<usize> = outcomes
        .iter()
        .enumerate()
        .filter(|(_, o)| matches!(o, Some(Outcome::Rejected(_))))
        .map(|(i, _)| i)
        .collect();
    if atomic && !rejected.is_empty() {
        for p in &prepared {
            outcomes[p.index] = Some(Outcome::Skipped(
                "batch refused as a whole: another record is invalid".into(),
            ));
        }
        prepared.clear();
    }

    // Bounded memory: records waiting for broker acknowledgement are capped.
    let _permits = if prepared.is_empty() {
        None
    } else {
        let wanted = u32::try_from(prepared.len()).unwrap_or(u32::MAX);
        Some(
            app.in_flight
                .clone()
                .try_acquire_many_owned(wanted)
                .map_err(|_| {
                    ApiError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "backpressure",
                        format!(
                            "more than {} events are waiting for the broker; retry shortly",
                            app.settings.max_in_flight
                        ),
                    )
                    .retry_after(1)
                })?,
        )
    };

    let topic = dataset.topic();
    let sends = prepared.iter().map(|p| {
        app.producer.send_bytes(
            &topic,
            p.key.as_deref().map(str::as_bytes),
            &p.payload,
            OwnedHeaders::new(),
        )
    });
    let deliveries = futures::future::join_all(sends).await;
    let mut remembered = Vec::new();
    let mut queue_full = false;
    for (p, delivery) in prepared.iter().zip(deliveries) {
        outcomes[p.index] = Some(match delivery {
            Ok(d) => {
                let accepted = Accepted {
                    partition: d.partition,
                    offset: d.offset,
                };
                if let Some(id) = &p.event_id {
                    remembered.push((id.clone(), accepted));
                }
                Outcome::Accepted(accepted)
            }
            Err(mlops_kafka::Error::QueueFull) => {
                queue_full = true;
                Outcome::Failed("producer queue full".into())
            }
            Err(e) => Outcome::Failed(format!("not acknowledged by the broker: {e}")),
        });
    }
    for (index, first) in repeats {
        outcomes[index] = Some(match &outcomes[first] {
            Some(Outcome::Accepted(a)) => Outcome::Duplicate(*a),
            Some(Outcome::Rejected(e)) => Outcome::Rejected(e.clone()),
            Some(Outcome::Skipped(r)) => Outcome::Skipped(r.clone()),
            _ => Outcome::Failed("its first copy in this request was not written".into()),
        });
    }
    if let Err(e) = app.store.remember(name, &remembered, now_millis()).await {
        tracing::error!(dataset = name, error = %e, "accepted event ids not remembered; a retry may duplicate them");
    }
    dead_letter_rejections(app, &dataset, &items, &outcomes, &bytes, ndjson).await;

    let mut counts: HashMap<&str, usize> = HashMap::new();
    let results: Vec<Json> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| {
            let (status, body) = match outcome {
                Some(Outcome::Accepted(a)) => (
                    "accepted",
                    json!({"partition": a.partition, "offset": a.offset}),
                ),
                Some(Outcome::Duplicate(a)) => (
                    "duplicate",
                    json!({"partition": a.partition, "offset": a.offset}),
                ),
                Some(Outcome::Rejected(errors)) => ("rejected", json!({"errors": errors})),
                Some(Outcome::Skipped(reason)) => ("skipped", json!({"reason": reason})),
                Some(Outcome::Failed(reason)) => ("failed", json!({"reason": reason})),
                None => ("failed", json!({"reason": "not processed"})),
            };
            *counts.entry(status).or_default() += 1;
            let mut result = json!({"index": index, "status": status});
            if let (Json::Object(target), Json::Object(extra)) = (&mut result, body) {
                target.extend(extra);
            }
            result
        })
        .collect();
    for (status, n) in &counts {
        app.count(name, status, *n);
    }
    app.reject(
        "invalid_record",
        counts.get("rejected").copied().unwrap_or(0),
    );

    let accepted = counts.get("accepted").copied().unwrap_or(0);
    let duplicates = counts.get("duplicate").copied().unwrap_or(0);
    let failed = counts.get("failed").copied().unwrap_or(0);
    let status = if failed > 0 && queue_full {
        StatusCode::TOO_MANY_REQUESTS
    } else if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if accepted + duplicates == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let body = json!({
        "accepted": accepted,
        "rejected": counts.get("rejected").copied().unwrap_or(0),
        "duplicates": duplicates,
        "results": results,
    });
    let mut response = (status, axum::Json(body)).into_response();
    if failed > 0 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    Ok(response)
}

/// One JSON object, a JSON array, or NDJSON lines. A body that is not JSON at all is a 400;
/// one bad NDJSON line is one rejected record.
fn parse_records(
    bytes: &[u8],
    ndjson: bool,
) -> Result<(bool, Vec<Result<Json, String>>), ApiError> {
    let bad = |reason: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", reason);
    if ndjson {
        let text =
            std::str::from_utf8(bytes).map_err(|e| bad(format!("body is not UTF-8: {e}")))?;
        let items: Vec<Result<Json, String>> = text
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).map_err(|e| format!("invalid JSON line: {e}")))
            .collect();
        if items.is_empty() {
            return Err(bad("no records in the body".into()));
        }
        return Ok((items.len() == 1, items));
    }
    match serde_json::from_slice::<Json>(bytes)
        .map_err(|e| bad(format!("body is not valid JSON: {e}")))?
    {
        Json::Array(items) if items.is_empty() => Err(bad("no records in the body".into())),
        Json::Array(items) => Ok((false, items.into_iter().map(Ok).collect())),
        object @ Json::Object(_) => Ok((true, vec![Ok(object)])),
        other => Err(bad(format!(
            "expected a JSON object or an array of objects, got {other}"
        ))),
    }
}

/// Rejected records go to the dataset's dead-letter topic with their reasons, so producers'
/// mistakes can be inspected and replayed; a failure here is logged, not silent.
async fn dead_letter_rejections(
    app: &App,
    dataset: &Dataset,
    items: &[Result<Json, String>],
    outcomes: &[Option<Outcome>],
    body: &[u8],
    ndjson: bool,
) {
    let topic = dataset.topic();
    let dlq = topics::dead_letter(&topic);
    let lines: Vec<&[u8]> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect()
    } else {
        Vec::new()
    };
    for (index, outcome) in outcomes.iter().enumerate() {
        let Some(Outcome::Rejected(errors)) = outcome else {
            continue;
        };
        let raw = match (&items[index], lines.get(index)) {
            (_, Some(line)) => line.to_vec(),
            (Ok(record), None) => record.to_string().into_bytes(),
            (Err(_), None) => Vec::new(),
        };
        let reason = errors
            .iter()
            .map(|e| {
                if e.field.is_empty() {
                    e.reason.clone()
                } else {
                    format!("{}: {}", e.field, e.reason)
                }
            })
            .collect::<Vec<_>>()
            .join("; ");
        let letter = DeadLetter {
            source_topic: topic.clone(),
            source_partition: -1,
            source_offset: -1,
            consumer_group: None,
            reason: reason.clone(),
            error_class: "validation".into(),
            key: None,
            value: Some(AvroBytes(raw)),
            headers: HashMap::new(),
            failed_at: now_millis(),
        };
        let headers = OwnedHeaders::new()
            .insert(mlops_kafka::Header {
                key: mlops_kafka::consumer::dlq_headers::REASON,
                value: Some(reason.as_bytes()),
            })
            .insert(mlops_kafka::Header {
                key: mlops_kafka::consumer::dlq_headers::ERROR_CLASS,
                value: Some(b"validation"),
            })
            .insert(mlops_kafka::Header {
                key: mlops_kafka::consumer::dlq_headers::SOURCE_TOPIC,
                value: Some(topic.as_bytes()),
            });
        if let Err(e) = tokio::time::timeout(
            Duration::from_secs(30),
            app.producer.send_event(&dlq, None, &letter, headers),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(dataset = %dataset.spec.name, index, error = %e, "rejected record not dead-lettered");
        }
    }
}
