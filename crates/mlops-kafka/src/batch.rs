//! Micro-batch consumption for handlers that work on many records at once (columnar
//! pipelines): the caller takes a batch, makes its results durable, then commits it.
//! Nothing is committed automatically; [`BatchConsumer::close`] makes the last commit
//! durable.

use std::{collections::BTreeMap, time::Duration};

use rdkafka::consumer::Consumer;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{
    ConsumerMetrics, KafkaConfig, Producer, Record, Result,
    consumer::{DeadLetters, Member, close, group_consumer},
};

/// Links from one batch's span to the records it holds, at most: a trace viewer lists
/// them all, and a sample names the producers as well as ten thousand would.
const MAX_LINKS: usize = 32;

/// The `process` span of a batch (OpenTelemetry's messaging conventions for a batch
/// consumer): a child of the first traced record, so that record's trace shows its
/// processing, with links to the spans of (up to [`MAX_LINKS`]) others.
pub fn batch_span(group: &str, records: &[Record]) -> tracing::Span {
    use opentelemetry::trace::TraceContextExt as _;
    let topic = records.first().map_or("", |r| r.topic.as_str());
    let span = tracing::info_span!(
        "process",
        otel.name = %format_args!("process {topic}"),
        otel.kind = "consumer",
        messaging.system = "kafka",
        messaging.operation.type = "process",
        messaging.operation.name = "process",
        messaging.destination.name = %topic,
        messaging.consumer.group.name = %group,
        messaging.batch.message_count = records.len(),
    );
    let mut traced = records.iter().filter_map(Record::trace_context);
    if let Some(first) = traced.next() {
        let _ = span.set_parent(first);
    }
    for context in traced.take(MAX_LINKS) {
        span.add_link(context.span().span_context().clone());
    }
    span
}

/// A consumer group member that hands out records in batches.
pub struct BatchConsumer {
    consumer: Member,
    group: String,
    dead_letters: DeadLetters,
}

impl BatchConsumer {
    /// Joins `group` on `topics` (names, or patterns starting with `^`). `dead_letters`
    /// produces to `<topic>.dlq`; commit failures are counted in `metrics`.
    pub fn new(
        config: &KafkaConfig,
        group: impl Into<String>,
        topics: &[String],
        dead_letters: Producer,
        metrics: ConsumerMetrics,
    ) -> Result<Self> {
        let group = group.into();
        metrics.started(topics, &group);
        Ok(Self {
            consumer: Member::new(group_consumer(config, &group, topics, metrics)?),
            dead_letters: DeadLetters::new(config, &group, dead_letters),
            group,
        })
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// Waits for a first record, then gathers more until `max_records` or until `max_wait`
    /// has passed since the first. `None` once `cancel` fires.
    pub async fn next_batch(
        &self,
        max_records: usize,
        max_wait: Duration,
        cancel: &CancellationToken,
    ) -> Option<Vec<Record>> {
        let mut batch = Vec::new();
        let mut deadline = None;
        while batch.len() < max_records.max(1) {
            let wait = async {
                match deadline {
                    Some(deadline) => tokio::time::sleep_until(deadline).await,
                    None => std::future::pending().await,
                }
            };
            let message = tokio::select! {
                () = cancel.cancelled() => return None,
                () = wait => break,
                message = self.consumer.recv() => message,
            };
            match message {
                Ok(message) => {
                    batch.push(Record::from(message.detach()));
                    deadline.get_or_insert_with(|| tokio::time::Instant::now() + max_wait);
                }
                Err(e) => {
                    warn!(group = %self.group, error = %e, "consume failed, retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        Some(batch)
    }

    /// Sends `record` to its dead-letter topic with the reason.
    pub async fn dead_letter(&self, record: &Record, class: &str, reason: &str) -> Result<()> {
        self.dead_letters.send(record, class, reason).await
    }

    /// Commits the positions after `records` (the highest offset per partition) without
    /// waiting for the broker; [`Self::close`] waits for the last one. A failed commit is
    /// logged, counted and carried by the next one, never an error of the batch.
    pub fn commit(&self, records: &[Record]) {
        let mut next: BTreeMap<(String, i32), i64> = BTreeMap::new();
        for record in records {
            let position = next
                .entry((record.topic.clone(), record.partition))
                .or_insert(0);
            *position = (*position).max(record.offset + 1);
        }
        self.consumer.context().state.commit(&*self.consumer, next);
    }

    /// Makes the last commit durable and leaves the group, bounded in time even when the
    /// broker is gone.
    pub async fn close(self) -> Result<()> {
        let positions = self.consumer.context().state.positions();
        close(self.consumer.into_inner(), &self.group, positions).await
    }
}
