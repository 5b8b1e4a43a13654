//! One request of events through ingestion, step by step: the body is read and parsed;
//! each record's event id is looked up among those accepted before; records are
//! validated and encoded; the valid ones are produced and acknowledged; accepted ids are
//! remembered, rejected records dead-lettered, and each record's outcome answered.
//! Parsing, validation and encoding run on the CPU pool for large bodies, so a 16 MiB
//! request does not hold an async worker.

use std::{collections::HashMap, sync::Arc, time::Duration};

use axum::{
    body::{Body, Bytes},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use mlops_events::now_millis;
use mlops_schema::json::FieldError;
use serde_json::Value as Json;
use tokio::sync::OwnedSemaphorePermit;

use super::{ApiError, App, check_region, read_body, unknown_dataset};
use crate::{
    dataset::Dataset,
    store::{Accepted, Fingerprint},
};

/// Bodies above this size are parsed and encoded on the CPU pool; below it, the hop to
/// another thread would cost more than the work.
const CPU_POOL_ABOVE_BYTES: usize = 256 * 1024;

/// What happened to one record of a request.
pub(super) enum Outcome {
    Accepted(Accepted),
    Duplicate(Accepted),
    Rejected(Vec<FieldError>),
    /// Rejected for reusing the id of another record with other content: answered as
    /// rejected, dead-lettered as a conflict rather than as invalid.
    Conflict(Vec<FieldError>),
    Skipped(String),
    Failed(String),
}

/// A valid record, encoded, waiting to be produced.
struct Prepared {
    index: usize,
    key: Option<String>,
    event_id: Option<String>,
    payload: Vec<u8>,
    /// Of `payload`, for a record with an event id: what its retries are compared with.
    fingerprint: Option<Fingerprint>,
}

/// The records of one request and what has happened to each so far.
pub(super) struct Checked {
    pub(super) outcomes: Vec<Option<Outcome>>,
    prepared: Vec<Prepared>,
    /// `(index, index of its first copy)`: a record repeated within the request.
    pub(super) repeats: Vec<(usize, usize)>,
}

impl Checked {
    pub(super) fn new(records: usize) -> Self {
        Self {
            outcomes: (0..records).map(|_| None).collect(),
            prepared: Vec::new(),
            repeats: Vec::new(),
        }
    }
}

pub(super) async fn ingest(
    app: &App,
    name: &str,
    atomic: Option<bool>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Incoming {
        dataset,
        _body_permit,
        bytes,
        ndjson,
        single,
        items,
    } = Incoming::read(app, name, headers, body).await?;
    let large = bytes.len() > CPU_POOL_ABOVE_BYTES;
    let idempotency_key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .filter(|_| single)
        .map(str::to_owned);
    let event_ids: Vec<Option<String>> = items
        .iter()
        .map(|item| {
            let record = item.as_ref().ok()?;
            dataset
                .event_id_of(record)
                .or_else(|| idempotency_key.clone())
        })
        .collect();
    let mut known = accepted_before(app, name, &event_ids).await?;
    known.extend(app.resolve_in_doubt(&dataset, &event_ids).await?);

    let items = Arc::new(items);
    let mut checked = if large {
        let (dataset, items) = (dataset.clone(), items.clone());
        mlops_runtime::cpu::run(move || check_and_encode(&dataset, &items, event_ids, &known)).await
    } else {
        check_and_encode(&dataset, &items, event_ids, &known)
    };
    if atomic.unwrap_or(app.settings.all_or_nothing) {
        refuse_all_if_any_rejected(&mut checked);
    }
    let _permits = reserve_in_flight(app, checked.prepared.len())?;
    let (remembered, queue_full) = produce(app, &dataset, &mut checked).await;
    resolve_repeats(&mut checked);
    if let Err(e) = app.store.remember(name, &remembered, now_millis()).await {
        tracing::error!(dataset = name, error = %e, "accepted event ids not remembered; a retry may duplicate them");
    }
    if !dataset.spec.labels.is_empty() {
        super::labels::emit_inline(app, &dataset, &items, &mut checked.outcomes).await;
    }
    let topic = dataset.topic();
    dead_letter_rejections(app, topic, &items, &checked.outcomes, &bytes, ndjson).await;
    Ok(respond(app, name, &checked.outcomes, queue_full))
}

/// A request body of a dataset's API (events or labels), read and parsed: the dataset,
/// its region checked, the body's share of the byte budget held until the answer.
pub(super) struct Incoming {
    pub(super) dataset: Arc<Dataset>,
    pub(super) _body_permit: OwnedSemaphorePermit,
    pub(super) bytes: Bytes,
    pub(super) ndjson: bool,
    /// One object rather than an array or lines.
    pub(super) single: bool,
    pub(super) items: Vec<Result<Json, String>>,
}

impl Incoming {
    pub(super) async fn read(
        app: &App,
        name: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Self, ApiError> {
        let dataset = app.dataset(name).ok_or_else(|| unknown_dataset(name))?;
        check_region(app, dataset.spec.region.as_deref())?;
        // Only ids are read back: a dataset without them has nothing to wait for.
        if dataset.spec.event_id.is_some() {
            app.recovery.check().await?;
        }
        let ndjson = is_ndjson(headers)?;
        let _body_permit = reserve_body(app, headers)?;
        let bytes = read_body(body, app.settings.max_body_bytes).await?;
        let (single, items) = if bytes.len() > CPU_POOL_ABOVE_BYTES {
            let body = bytes.clone();
            mlops_runtime::cpu::run(move || parse_records(&body, ndjson)).await?
        } else {
            parse_records(&bytes, ndjson)?
        };
        Ok(Self {
            dataset,
            _body_permit,
            bytes,
            ndjson,
            single,
            items,
        })
    }
}

/// What one broker acknowledgement (or its failure) means for a record; a full producer
/// queue is noted in `queue_full` (the request then answers 429, not 503).
pub(super) fn delivered(
    delivery: mlops_kafka::Result<mlops_kafka::Delivery>,
    fingerprint: Option<Fingerprint>,
    queue_full: &mut bool,
) -> Outcome {
    match delivery {
        Ok(d) => Outcome::Accepted(Accepted {
            partition: d.partition,
            offset: d.offset,
            fingerprint,
        }),
        Err(mlops_kafka::Error::QueueFull) => {
            *queue_full = true;
            Outcome::Failed("producer queue full".into())
        }
        Err(e) => Outcome::Failed(format!("not acknowledged by the broker: {e}")),
    }
}

fn is_ndjson(headers: &HeaderMap) -> Result<bool, ApiError> {
    match headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        Some(t) if t.starts_with("application/x-ndjson") => Ok(true),
        Some(t) if t.starts_with("application/json") => Ok(false),
        other => Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            format!(
                "content type {:?} is not accepted; send application/json (one object or an array) or application/x-ndjson",
                other.unwrap_or("none")
            ),
        )),
    }
}

/// Bounded memory before the body is read: a request holds its declared length (the
/// largest allowed when it declares none) until its answer is sent; 429 beyond.
fn reserve_body(app: &App, headers: &HeaderMap) -> Result<OwnedSemaphorePermit, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(app.settings.max_body_bytes)
        .min(app.settings.max_body_bytes);
    let kib = u32::try_from(declared.div_ceil(1024).max(1)).unwrap_or(u32::MAX);
    app.body_kib_in_flight
        .clone()
        .try_acquire_many_owned(kib)
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "backpressure",
                format!(
                    "more than {} bytes of request bodies are being processed; retry shortly",
                    app.settings.max_body_bytes_in_flight
                ),
            )
            .retry_after(1)
        })
}

/// Event ids of this request accepted within the idempotency window, in one query.
pub(super) async fn accepted_before(
    app: &App,
    dataset: &str,
    event_ids: &[Option<String>],
) -> Result<HashMap<String, Accepted>, ApiError> {
    let ids: Vec<&str> = event_ids.iter().flatten().map(String::as_str).collect();
    app.store
        .accepted(dataset, &ids, app.window_start())
        .await
        .map_err(super::database)
}

/// Each record: a duplicate (of an earlier request or of a record before it in this one),
/// a conflict (its id used before for other content), rejected with every field at fault,
/// or converted to Avro and framed for the wire.
fn check_and_encode(
    dataset: &Dataset,
    items: &[Result<Json, String>],
    mut event_ids: Vec<Option<String>>,
    known: &HashMap<String, Accepted>,
) -> Checked {
    let mut checked = Checked::new(items.len());
    // The first record of each id in this request, and its fingerprint once it is valid.
    let mut first_seen: HashMap<String, (usize, Option<Fingerprint>)> = HashMap::new();
    for (index, item) in items.iter().enumerate() {
        let record = match item {
            Ok(record) => record,
            Err(reason) => {
                checked.outcomes[index] = Some(Outcome::Rejected(vec![FieldError {
                    field: String::new(),
                    reason: reason.clone(),
                }]));
                continue;
            }
        };
        let event_id = event_ids[index].take();
        // Framed as it goes on the wire: the Confluent header, then the Avro body.
        let mut payload = Vec::with_capacity(mlops_schema::HEADER_LEN + 64);
        mlops_schema::write_frame_header(&mut payload, dataset.schema_id);
        let encoded = dataset.converter.encode_into(record, &mut payload);
        let fingerprint = match (&event_id, &encoded) {
            (Some(_), Ok(())) => Some(Fingerprint::of(
                dataset.schema_id,
                &payload[mlops_schema::HEADER_LEN..],
            )),
            _ => None,
        };
        if let Some(id) = &event_id {
            // Built only for an id taken already: a new id (the common case) costs nothing.
            let reuse = || IdReuse {
                field: id_field(dataset, record),
                id,
                what: "event",
                fingerprint,
            };
            if let Some(&(first, first_fingerprint)) = first_seen.get(id) {
                reuse().of_earlier_copy(&mut checked, index, first, first_fingerprint);
                continue;
            }
            if let Some(accepted) = known.get(id) {
                checked.outcomes[index] = Some(reuse().of_accepted(accepted));
                continue;
            }
            first_seen.insert(id.clone(), (index, None));
        }
        if let Err(errors) = encoded {
            checked.outcomes[index] = Some(Outcome::Rejected(errors));
            continue;
        }
        let violations = dataset.check_rules(record);
        if !violations.is_empty() {
            checked.outcomes[index] = Some(Outcome::Rejected(violations));
            continue;
        }
        if let Some(first) = event_id.as_ref().and_then(|id| first_seen.get_mut(id)) {
            first.1 = fingerprint;
        }
        checked.prepared.push(Prepared {
            index,
            key: dataset.key_of(record),
            event_id,
            payload,
            fingerprint,
        });
    }
    checked
}

/// Where a record's event id came from: the dataset's id field, or for a single event
/// without one, the `Idempotency-Key` header.
fn id_field<'a>(dataset: &'a Dataset, record: &Json) -> &'a str {
    match dataset.spec.event_id.as_deref() {
        Some(field) if dataset.event_id_of(record).is_some() => field,
        _ => "Idempotency-Key",
    }
}

/// A record (an event, a label) whose id is taken already — by an accepted record or by
/// an earlier copy in the same request. A retry (the same content) is answered as that
/// one; a new record under a taken id would be lost that way, so it is refused as a
/// conflict, and dead-lettered with the reason.
pub(super) struct IdReuse<'a> {
    /// Where the id came from: the dataset's id field, `Idempotency-Key`, `label_id`.
    pub(super) field: &'a str,
    pub(super) id: &'a str,
    /// `event` or `label`, in the reason.
    pub(super) what: &'a str,
    /// What this one holds (`None`: it could not be encoded, so nothing is compared).
    pub(super) fingerprint: Option<Fingerprint>,
}

impl IdReuse<'_> {
    /// Answered `duplicate` of `accepted`, or refused as a conflict with it.
    pub(super) fn of_accepted(&self, accepted: &Accepted) -> Outcome {
        let which = format!(
            "the {} accepted at partition {}, offset {}",
            self.what, accepted.partition, accepted.offset
        );
        match self.conflict(accepted.fingerprint, which) {
            Some(error) => Outcome::Conflict(vec![error]),
            None => Outcome::Duplicate(*accepted),
        }
    }

    /// Answered as record `first` of the request (`resolve_repeats`), or refused.
    pub(super) fn of_earlier_copy(
        &self,
        checked: &mut Checked,
        index: usize,
        first: usize,
        first_fingerprint: Option<Fingerprint>,
    ) {
        let which = format!("{} {first} of this request", self.what);
        match self.conflict(first_fingerprint, which) {
            Some(error) => checked.outcomes[index] = Some(Outcome::Conflict(vec![error])),
            None => checked.repeats.push((index, first)),
        }
    }

    /// The error when `earlier` (named by `which`) is proven to hold other content.
    fn conflict(&self, earlier: Option<Fingerprint>, which: String) -> Option<FieldError> {
        match (self.fingerprint, earlier) {
            (Some(mine), Some(earlier)) if mine.contradicts(&earlier) => Some(FieldError {
                field: self.field.to_owned(),
                reason: format!(
                    "id {:?} is already taken by {which}, with other content: this {} is not written; a retry must repeat the content, a new {} needs a new id",
                    self.id, self.what, self.what
                ),
            }),
            _ => None,
        }
    }
}

/// All-or-nothing: one rejected record refuses the whole request.
fn refuse_all_if_any_rejected(checked: &mut Checked) {
    let any_rejected = checked
        .outcomes
        .iter()
        .any(|o| matches!(o, Some(Outcome::Rejected(_) | Outcome::Conflict(_))));
    if any_rejected {
        for p in &checked.prepared {
            checked.outcomes[p.index] = Some(Outcome::Skipped(
                "batch refused as a whole: another record is invalid".into(),
            ));
        }
        checked.prepared.clear();
    }
}

/// Bounded memory: records waiting for broker acknowledgement are capped (429 beyond).
pub(super) fn reserve_in_flight(
    app: &App,
    records: usize,
) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
    if records == 0 {
        return Ok(None);
    }
    let wanted = u32::try_from(records).unwrap_or(u32::MAX);
    app.in_flight
        .clone()
        .try_acquire_many_owned(wanted)
        .map(Some)
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
        })
}

/// Produces the prepared records concurrently and waits for every acknowledgement.
/// Returns the event ids to remember and whether the producer's queue was full.
async fn produce(
    app: &App,
    dataset: &Dataset,
    checked: &mut Checked,
) -> (Vec<(String, Accepted)>, bool) {
    let topic = dataset.topic();
    let tried_at = now_millis();
    let sends = checked.prepared.iter().map(|p| {
        let mut headers = mlops_kafka::region_headers(dataset.spec.region.as_deref());
        if let Some(id) = &p.event_id {
            // Read back by `recover_accepted` if this process dies before remembering it.
            headers = headers.insert(mlops_kafka::Header {
                key: mlops_events::topics::EVENT_ID_HEADER,
                value: Some(id.as_str()),
            });
        }
        app.producer.send_bytes(
            topic,
            p.key.as_deref().map(str::as_bytes),
            &p.payload,
            headers,
        )
    });
    let deliveries = futures::future::join_all(sends).await;
    let mut remembered = Vec::new();
    let mut in_doubt = Vec::new();
    let mut queue_full = false;
    for (p, delivery) in checked.prepared.iter().zip(deliveries) {
        // Refused by the local queue: never sent. Any other failure may have been written.
        let never_sent = matches!(delivery, Err(mlops_kafka::Error::QueueFull));
        let outcome = delivered(delivery, p.fingerprint, &mut queue_full);
        match (&outcome, &p.event_id) {
            (Outcome::Accepted(accepted), Some(id)) => remembered.push((id.clone(), *accepted)),
            (Outcome::Failed(_), Some(id)) if !never_sent => in_doubt.push(id.clone()),
            _ => {}
        }
        checked.outcomes[p.index] = Some(outcome);
    }
    app.in_doubt.add(&dataset.spec.name, tried_at, in_doubt);
    (remembered, queue_full)
}

/// A record repeated within the request shares its first copy's outcome.
pub(super) fn resolve_repeats(checked: &mut Checked) {
    for &(index, first) in &checked.repeats {
        checked.outcomes[index] = Some(match &checked.outcomes[first] {
            Some(Outcome::Accepted(a)) => Outcome::Duplicate(*a),
            Some(Outcome::Rejected(e)) => Outcome::Rejected(e.clone()),
            Some(Outcome::Conflict(e)) => Outcome::Conflict(e.clone()),
            Some(Outcome::Skipped(r)) => Outcome::Skipped(r.clone()),
            _ => Outcome::Failed("its first copy in this request was not written".into()),
        });
    }
}

/// Per-record results and the request's status: 200 when anything was accepted (or was
/// already), 422 when nothing was valid, 503 (or 429 when the queue was full) when the
/// broker did not acknowledge a valid record.
pub(super) fn respond(
    app: &App,
    name: &str,
    outcomes: &[Option<Outcome>],
    queue_full: bool,
) -> Response {
    // Serialized straight from these structs (fields in alphabetical order, as the JSON
    // objects were before): no tree of JSON values per record on every request.
    #[derive(serde::Serialize)]
    struct Answer<'a> {
        accepted: usize,
        duplicates: usize,
        rejected: usize,
        results: Vec<RecordResult<'a>>,
    }
    #[derive(serde::Serialize)]
    struct RecordResult<'a> {
        #[serde(skip_serializing_if = "Option::is_none")]
        errors: Option<&'a [FieldError]>,
        index: usize,
        #[serde(skip_serializing_if = "Option::is_none")]
        offset: Option<i64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        partition: Option<i32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'a str>,
        status: &'static str,
    }
    let (mut accepted, mut duplicates, mut rejected, mut skipped, mut failed) = (0, 0, 0, 0, 0);
    let mut conflicts = 0;
    let results: Vec<RecordResult<'_>> = outcomes
        .iter()
        .enumerate()
        .map(|(index, outcome)| {
            let mut result = RecordResult {
                errors: None,
                index,
                offset: None,
                partition: None,
                reason: None,
                status: "failed",
            };
            match outcome {
                Some(Outcome::Accepted(a)) => {
                    accepted += 1;
                    (result.status, result.partition, result.offset) =
                        ("accepted", Some(a.partition), Some(a.offset));
                }
                Some(Outcome::Duplicate(a)) => {
                    duplicates += 1;
                    (result.status, result.partition, result.offset) =
                        ("duplicate", Some(a.partition), Some(a.offset));
                }
                Some(outcome @ (Outcome::Rejected(errors) | Outcome::Conflict(errors))) => {
                    rejected += 1;
                    conflicts += usize::from(matches!(outcome, Outcome::Conflict(_)));
                    (result.status, result.errors) = ("rejected", Some(errors.as_slice()));
                }
                Some(Outcome::Skipped(reason)) => {
                    skipped += 1;
                    (result.status, result.reason) = ("skipped", Some(reason.as_str()));
                }
                Some(Outcome::Failed(reason)) => {
                    failed += 1;
                    result.reason = Some(reason.as_str());
                }
                None => {
                    failed += 1;
                    result.reason = Some("not processed");
                }
            }
            result
        })
        .collect();
    for (status, n) in [
        ("accepted", accepted),
        ("duplicate", duplicates),
        ("rejected", rejected),
        ("skipped", skipped),
        ("failed", failed),
    ] {
        app.count(name, status, n);
    }
    app.reject("invalid_record", rejected - conflicts);
    app.reject("id_conflict", conflicts);

    let status = if failed > 0 && queue_full {
        StatusCode::TOO_MANY_REQUESTS
    } else if failed > 0 {
        StatusCode::SERVICE_UNAVAILABLE
    } else if accepted + duplicates == 0 {
        StatusCode::UNPROCESSABLE_ENTITY
    } else {
        StatusCode::OK
    };
    let body = Answer {
        accepted,
        duplicates,
        rejected,
        results,
    };
    let mut response = (status, axum::Json(body)).into_response();
    if failed > 0 {
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(1u64));
    }
    response
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

/// Rejected records go to the dataset's dead-letter topic with their reasons (error class
/// `validation`, or `conflict` for a record reusing a taken id), so producers' mistakes
/// can be inspected and replayed; a failure here is logged, not silent.
pub(super) async fn dead_letter_rejections(
    app: &App,
    topic: &str,
    items: &[Result<Json, String>],
    outcomes: &[Option<Outcome>],
    body: &[u8],
    ndjson: bool,
) {
    let lines: Vec<&[u8]> = if ndjson {
        body.split(|b| *b == b'\n')
            .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
            .collect()
    } else {
        Vec::new()
    };
    for (index, outcome) in outcomes.iter().enumerate() {
        let (class, errors) = match outcome {
            Some(Outcome::Rejected(errors)) => ("validation", errors),
            Some(Outcome::Conflict(errors)) => ("conflict", errors),
            _ => continue,
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
        if let Err(e) = tokio::time::timeout(
            Duration::from_secs(30),
            app.dead_letters
                .send_refused(topic, None, raw, class, &reason),
        )
        .await
        .map_err(|_| "timed out".to_owned())
        .and_then(|r| r.map_err(|e| e.to_string()))
        {
            tracing::error!(topic, index, error = %e, "rejected record not dead-lettered");
        }
    }
}
