//! Ground truth in, the producers' way: `POST /v1/datasets/{name}/labels`, and the labels a
//! dataset carries inline in its events (`labels: [...]` in its declaration). Both become
//! `GroundTruthLabel`s on the `labels` topic, keyed by entity id, idempotent on
//! `label_id`: a label sent again with the same id and content is a duplicate, one with
//! the same id and another content is refused (a correction needs its own id), and
//! readers keep one label per id. Boolean labels become 1 and 0, so binary targets train
//! as numbers.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{Path, State},
    http::HeaderMap,
    response::Response,
};
use mlops_events::{GroundTruthLabel, LabelValue, now_millis, topics};
use mlops_kafka::OwnedHeaders;
use mlops_schema::json::FieldError;
use serde_json::Value as Json;
use sha2::{Digest, Sha256};

use super::{
    ApiError, App,
    ingest::{
        Checked, IdReuse, Incoming, Outcome, accepted_before, dead_letter_rejections, delivered,
        reserve_in_flight, resolve_repeats, respond,
    },
};
use crate::{dataset::Dataset, store::Fingerprint};

/// Fields of one label in a request body.
const FIELDS: [&str; 5] = ["entity_id", "label", "event_time", "request_id", "label_id"];

pub(super) async fn post_labels(
    State(app): State<Arc<App>>,
    Path(name): Path<String>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let result = ingest_labels(&app, &name, &parts.headers, body).await;
    if let Err(e) = &result {
        app.reject(e.code, 1);
    }
    result
}

/// Idempotency keys of labels live apart from the dataset's event ids.
fn namespace(dataset: &str) -> String {
    format!("{dataset}#labels")
}

async fn ingest_labels(
    app: &App,
    name: &str,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let Incoming {
        dataset,
        _body_permit,
        bytes,
        ndjson,
        items,
        ..
    } = Incoming::read(app, name, headers, body).await?;
    let received_at = now_millis();
    let labels: Vec<Result<GroundTruthLabel, Vec<FieldError>>> = items
        .iter()
        .map(|item| match item {
            Ok(json) => label_from_json(name, json, received_at),
            Err(reason) => Err(vec![FieldError {
                field: String::new(),
                reason: reason.clone(),
            }]),
        })
        .collect();
    let ids: Vec<Option<String>> = labels
        .iter()
        .map(|l| l.as_ref().ok().map(|l| l.label_id.clone()))
        .collect();
    let known = accepted_before(app, &namespace(name), &ids).await?;

    let mut checked = Checked::new(labels.len());
    let mut first_seen: HashMap<&str, (usize, Fingerprint)> = HashMap::new();
    let mut to_send = Vec::new();
    for (index, label) in labels.iter().enumerate() {
        let label = match label {
            Err(errors) => {
                checked.outcomes[index] = Some(Outcome::Rejected(errors.clone()));
                continue;
            }
            Ok(label) => label,
        };
        let id = label.label_id.as_str();
        let fingerprint = fingerprint(label);
        let reuse = IdReuse {
            field: "label_id",
            id,
            what: "label",
            fingerprint: Some(fingerprint),
        };
        if let Some(&(first, first_fingerprint)) = first_seen.get(id) {
            reuse.of_earlier_copy(&mut checked, index, first, Some(first_fingerprint));
        } else if let Some(accepted) = known.get(id) {
            checked.outcomes[index] = Some(reuse.of_accepted(accepted));
        } else {
            first_seen.insert(id, (index, fingerprint));
            to_send.push((index, label, fingerprint));
        }
    }
    let _permits = reserve_in_flight(app, to_send.len())?;
    let sends = to_send.iter().map(|(_, label, _)| {
        app.producer.send_event(
            topics::LABELS,
            Some(label.entity_id.as_bytes()),
            *label,
            mlops_kafka::region_headers(dataset.spec.region.as_deref()),
        )
    });
    let deliveries = futures::future::join_all(sends).await;
    let mut remembered = Vec::new();
    let mut queue_full = false;
    for ((index, label, fingerprint), delivery) in to_send.iter().zip(deliveries) {
        let outcome = delivered(delivery, Some(*fingerprint), &mut queue_full);
        if let Outcome::Accepted(accepted) = &outcome {
            remembered.push((label.label_id.clone(), *accepted));
        }
        checked.outcomes[*index] = Some(outcome);
    }
    resolve_repeats(&mut checked);
    if let Err(e) = app
        .store
        .remember(&namespace(name), &remembered, now_millis())
        .await
    {
        tracing::error!(dataset = name, error = %e, "accepted label ids not remembered; a retry may duplicate them");
    }
    dead_letter_rejections(
        app,
        topics::LABELS,
        &items,
        &checked.outcomes,
        &bytes,
        ndjson,
    )
    .await;
    Ok(respond(app, name, &checked.outcomes, queue_full))
}

/// One label of a request body, every problem named by its field.
pub(crate) fn label_from_json(
    dataset: &str,
    json: &Json,
    received_at: i64,
) -> Result<GroundTruthLabel, Vec<FieldError>> {
    let Json::Object(fields) = json else {
        return Err(vec![FieldError {
            field: String::new(),
            reason: format!("a label is a JSON object, not {json}"),
        }]);
    };
    let mut errors = Vec::new();
    let mut fail = |field: &str, reason: String| {
        errors.push(FieldError {
            field: field.to_owned(),
            reason,
        })
    };
    for name in fields.keys() {
        if !FIELDS.contains(&name.as_str()) {
            fail(
                name,
                format!("unknown field; a label has {}", FIELDS.join(", ")),
            );
        }
    }
    let text =
        |name: &str, required: bool, fail: &mut dyn FnMut(&str, String)| match fields.get(name) {
            Some(Json::String(s)) if !s.is_empty() => Some(s.clone()),
            None | Some(Json::Null) if !required => None,
            None | Some(Json::Null) => {
                fail(name, "is required".into());
                None
            }
            Some(other) => {
                fail(name, format!("must be a non-empty string, not {other}"));
                None
            }
        };
    let entity_id = text("entity_id", true, &mut fail);
    let request_id = text("request_id", false, &mut fail);
    let label_id = text("label_id", false, &mut fail);
    let label = match fields.get("label") {
        None | Some(Json::Null) => {
            fail("label", "is required".into());
            None
        }
        Some(value) => {
            let parsed = label_value(value);
            if parsed.is_none() {
                fail(
                    "label",
                    format!("must be a number, a non-empty string or a boolean, not {value}"),
                );
            }
            parsed
        }
    };
    let event_time = match fields.get("event_time") {
        None | Some(Json::Null) => {
            fail("event_time", "is required".into());
            None
        }
        Some(value) => {
            let parsed = mlops_schema::json::timestamp_millis(value);
            if parsed.is_none() {
                fail(
                    "event_time",
                    format!("must be epoch milliseconds or an RFC 3339 time, not {value}"),
                );
            }
            parsed
        }
    };
    match (entity_id, label, event_time) {
        (Some(entity_id), Some(label), Some(event_time)) if errors.is_empty() => {
            let label_id = label_id.unwrap_or_else(|| {
                derived_id(&[
                    dataset,
                    &entity_id,
                    &event_time.to_string(),
                    request_id.as_deref().unwrap_or_default(),
                    &label_text(&label),
                ])
            });
            Ok(GroundTruthLabel {
                label_id,
                dataset: dataset.to_owned(),
                entity_id,
                request_id,
                label,
                event_time,
                received_at,
                trace_id: mlops_telemetry::current_trace_id(),
            })
        }
        _ => Err(errors),
    }
}

/// A label value: numbers as they are, booleans as 1 and 0, non-empty strings as classes.
pub(crate) fn label_value(value: &Json) -> Option<LabelValue> {
    match value {
        Json::Number(n) => n.as_f64().filter(|f| f.is_finite()).map(LabelValue::Number),
        Json::Bool(b) => Some(LabelValue::Number(if *b { 1.0 } else { 0.0 })),
        Json::String(s) if !s.is_empty() => Some(LabelValue::Class(s.clone())),
        _ => None,
    }
}

/// What a label says, without when it was received (which a retry changes): what a label
/// sent again under its id is compared with.
fn fingerprint(label: &GroundTruthLabel) -> Fingerprint {
    let value = match &label.label {
        LabelValue::Number(n) => format!("number:{n}"),
        LabelValue::Class(c) => format!("class:{c}"),
    };
    Fingerprint::of_parts(
        Fingerprint::FIELDS,
        &[
            label.entity_id.as_bytes(),
            &label.event_time.to_be_bytes(),
            label.request_id.as_deref().unwrap_or_default().as_bytes(),
            value.as_bytes(),
        ],
    )
}

fn label_text(label: &LabelValue) -> String {
    match label {
        LabelValue::Number(n) => n.to_string(),
        LabelValue::Class(c) => c.clone(),
    }
}

/// A stable id from a label's content: the same label sent twice is one label.
fn derived_id(parts: &[&str]) -> String {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    hex::encode(&hasher.finalize()[..16])
}

/// The labels of accepted (and already accepted) events of a dataset that declares label
/// fields: one `GroundTruthLabel` per non-null label field, its id the event's place on the
/// raw topic and the field (`raw.<dataset>/<partition>/<offset>/<field>`), so a retried
/// event re-sends the same label. An event whose label is not acknowledged is answered as
/// failed, so the producer retries it (the event itself is deduplicated by its id).
pub(super) async fn emit_inline(
    app: &App,
    dataset: &Dataset,
    items: &[Result<Json, String>],
    outcomes: &mut [Option<Outcome>],
) {
    let topic = dataset.topic();
    let received_at = now_millis();
    let mut labels = Vec::new();
    for (index, outcome) in outcomes.iter().enumerate() {
        let (Some(Outcome::Accepted(at) | Outcome::Duplicate(at)), Some(Ok(record))) =
            (outcome, items.get(index))
        else {
            continue;
        };
        let (Some(entity_id), Some(event_time)) = (
            dataset.key_of(record),
            record
                .get(&dataset.spec.event_time)
                .and_then(mlops_schema::json::timestamp_millis),
        ) else {
            continue;
        };
        for field in &dataset.spec.labels {
            let Some(label) = record.get(field).and_then(label_value) else {
                continue;
            };
            labels.push((
                index,
                GroundTruthLabel {
                    label_id: format!("{topic}/{}/{}/{field}", at.partition, at.offset),
                    dataset: dataset.spec.name.clone(),
                    entity_id: entity_id.clone(),
                    request_id: None,
                    label,
                    event_time,
                    received_at,
                    trace_id: mlops_telemetry::current_trace_id(),
                },
            ));
        }
    }
    let sends = labels.iter().map(|(_, label)| {
        app.producer.send_event(
            topics::LABELS,
            Some(label.entity_id.as_bytes()),
            label,
            OwnedHeaders::new(),
        )
    });
    let deliveries = futures::future::join_all(sends).await;
    for ((index, label), delivery) in labels.iter().zip(deliveries) {
        if let Err(e) = delivery {
            tracing::warn!(label_id = %label.label_id, error = %e, "inline label not acknowledged");
            outcomes[*index] = Some(Outcome::Failed(format!(
                "the event was written but its label was not acknowledged ({e}); retry it (the event is deduplicated by its id)"
            )));
        }
    }
}
