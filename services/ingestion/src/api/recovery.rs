//! Crash recovery of accepted event ids. Ingestion produces a request's records, waits for
//! the broker's acknowledgements, then remembers their event ids: a process killed between
//! the two leaves events in the raw topic that it never remembered, and the client, which
//! got no answer, retries them. So at start the tail of every raw topic is read back and
//! the event ids its records carry (`mlops-event-id`) are remembered before any event is
//! taken: the retry is answered `duplicate`, the topic holds each event once. The API
//! serves meanwhile: an event with an id waits a moment for the first reading back,
//! then (or at once, once an attempt failed) is answered 503 with the reason and
//! `Retry-After` ([`Recovery`]), and `/readyz` says why — so a broker that is down when
//! the service starts costs the clients retries, not a dark port.
//!
//! Where the tail starts: requests run concurrently, so the highest remembered offset
//! says nothing of an earlier record whose request had not finished. A record never
//! remembered was produced while its request was in flight, at most the producer's
//! delivery timeout before the process died — which was after the last id it remembered.
//! So the tail starts at the broker's time index for (last remembered − delivery timeout),
//! and never earlier than the idempotency window.

use std::{
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use mlops_events::topics::EVENT_ID_HEADER;
use mlops_kafka::ReadFrom;
use tokio::sync::Notify;

use super::{ApiError, App};
use crate::store::{Accepted, Fingerprint};

/// How long one partition's tail may take to read back.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// How long an event waits for the first reading back to finish before it is answered
/// 503: a restart's reading back takes about a second, which clients then never see.
const FIRST_READ_WAIT: Duration = Duration::from_secs(5);

/// Whether the raw topics' tails have been read back since the service started, and
/// why not yet.
#[derive(Debug, Default)]
pub(crate) struct Recovery {
    done: AtomicBool,
    /// Wakes the events waiting for the first reading back.
    finished: Notify,
    /// The last attempt's failure.
    failed: Mutex<Option<String>>,
}

impl Recovery {
    /// `Ok` once the tails are read back; until then the 503 an event is answered with —
    /// at once when an attempt has failed already, else after waiting a moment for the
    /// first one.
    pub(crate) async fn check(&self) -> Result<(), ApiError> {
        if self.done.load(Ordering::Acquire) {
            return Ok(());
        }
        if self.failed.lock().expect("recovery lock").is_none() {
            let finished = self.finished.notified();
            let mut finished = std::pin::pin!(finished);
            // Registered before the second look, so a finish in between is not missed.
            finished.as_mut().enable();
            if !self.done.load(Ordering::Acquire) {
                let _ = tokio::time::timeout(FIRST_READ_WAIT, finished).await;
            }
            if self.done.load(Ordering::Acquire) {
                return Ok(());
            }
        }
        Err(ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "recovering",
            format!(
                "{}; retry shortly",
                self.reason().unwrap_or_else(|| "starting".to_owned())
            ),
        )
        .retry_after(1))
    }

    /// Why events are not taken yet (`None` once they are): what `/readyz` shows.
    pub(crate) fn reason(&self) -> Option<String> {
        if self.done.load(Ordering::Acquire) {
            return None;
        }
        let failed = self.failed.lock().expect("recovery lock").clone();
        Some(match failed {
            Some(e) => format!(
                "the raw topics' tails are not read back yet (accepted ids of the last run, so that no retry is written twice): {e}"
            ),
            None => "reading back the raw topics' tails (accepted ids of the last run, so that no retry is written twice)".to_owned(),
        })
    }

    /// An attempt failed: events are answered 503 at once, with `error`, until one works.
    pub(crate) fn failed(&self, error: String) {
        *self.failed.lock().expect("recovery lock") = Some(error);
        self.finished.notify_waiters();
    }

    pub(crate) fn done(&self) {
        self.done.store(true, Ordering::Release);
        self.finished.notify_waiters();
    }
}

impl App {
    /// Remembers the event ids found in the raw topics' tails that were not remembered;
    /// returns how many.
    pub(crate) async fn recover_accepted(&self, window_ms: i64) -> anyhow::Result<usize> {
        let in_flight_ms = i64::from(self.kafka.delivery_timeout_ms) + 5_000;
        let datasets: Vec<_> = self
            .datasets
            .read()
            .expect("datasets lock")
            .values()
            .filter(|d| d.spec.event_id.is_some())
            .cloned()
            .collect();
        let window_start = mlops_events::now_millis() - window_ms;
        let mut recovered = 0;
        for dataset in datasets {
            let name = &dataset.spec.name;
            let topic = dataset.topic();
            let partitions =
                match mlops_kafka::partition_count(&self.kafka, topic, READ_TIMEOUT).await {
                    Ok(n) => n,
                    // Declared but its topic not created yet: nothing was produced to it.
                    Err(mlops_kafka::Error::Unreachable(reason))
                        if reason.contains("does not exist") =>
                    {
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
            let not_before = match self.store.last_accepted_at(name).await? {
                Some(last) => (last - in_flight_ms).max(window_start),
                None => window_start,
            };
            for partition in 0..partitions {
                let written =
                    events_written(&self.kafka, topic, partition, not_before, READ_TIMEOUT).await?;
                let ids: Vec<&str> = written.iter().map(|w| w.id.as_str()).collect();
                let known = self.store.accepted(name, &ids, window_start).await?;
                let found: Vec<Written> = written
                    .into_iter()
                    .filter(|w| !known.contains_key(&w.id))
                    .collect();
                if found.is_empty() {
                    continue;
                }
                // Remembered as of when each was produced, so the window ages them right.
                let oldest = found.iter().map(|w| w.at).min().unwrap_or(not_before);
                let ids: Vec<(String, Accepted)> =
                    found.into_iter().map(|w| (w.id, w.accepted)).collect();
                self.store.remember(name, &ids, oldest).await?;
                tracing::warn!(
                    dataset = %name,
                    partition,
                    events = ids.len(),
                    "event ids produced but not remembered (the last run stopped between the two) recovered from the raw topic"
                );
                recovered += ids.len();
            }
        }
        Ok(recovered)
    }
}

/// An event found in a raw topic by the `mlops-event-id` header of its record.
pub(super) struct Written {
    pub(super) id: String,
    pub(super) accepted: Accepted,
    /// When the record was written (ms).
    pub(super) at: i64,
}

/// Every record of `topic`'s `partition` written from `not_before` on that names its event.
pub(super) async fn events_written(
    kafka: &mlops_kafka::KafkaConfig,
    topic: &str,
    partition: i32,
    not_before: i64,
    timeout: Duration,
) -> mlops_kafka::Result<Vec<Written>> {
    let from = ReadFrom::Offset {
        offset: 0,
        not_before,
    };
    let records = mlops_kafka::read_records(kafka, topic, partition, from, timeout).await?;
    Ok(records
        .iter()
        .filter_map(|r| {
            let id = std::str::from_utf8(r.header(EVENT_ID_HEADER)?).ok()?;
            Some(Written {
                id: id.to_owned(),
                accepted: Accepted {
                    partition: r.partition,
                    offset: r.offset,
                    fingerprint: r.payload.as_deref().and_then(Fingerprint::of_framed),
                },
                at: r.timestamp_millis.unwrap_or_else(mlops_events::now_millis),
            })
        })
        .collect())
}
