//! Crash recovery of accepted event ids. Ingestion produces a request's records, waits for
//! the broker's acknowledgements, then remembers their event ids: a process killed between
//! the two leaves events in the raw topic that it never remembered, and the client, which
//! got no answer, retries them. So at start the tail of every raw topic is read back and
//! the event ids its records carry (`mlops-event-id`) are remembered before any request is
//! served: the retry is answered `duplicate`, the topic holds each event once.
//!
//! Where the tail starts: requests run concurrently, so the highest remembered offset
//! says nothing of an earlier record whose request had not finished. A record never
//! remembered was produced while its request was in flight, at most the producer's
//! delivery timeout before the process died — which was after the last id it remembered.
//! So the tail starts at the broker's time index for (last remembered − delivery timeout),
//! and never earlier than the idempotency window.

use std::time::Duration;

use mlops_events::topics::EVENT_ID_HEADER;
use mlops_kafka::ReadFrom;

use super::App;
use crate::store::Accepted;

/// How long one partition's tail may take to read back.
const READ_TIMEOUT: Duration = Duration::from_secs(60);

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
                },
                at: r.timestamp_millis.unwrap_or_else(mlops_events::now_millis),
            })
        })
        .collect())
}
