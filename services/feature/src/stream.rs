//! Stream jobs: consume in micro-batches, make each batch durable, then checkpoint.
//!
//! For every batch: the job writes its outputs (feature rows to `features.<view>`, Parquet
//! files named by batch number), the late or unusable events go to the dead-letter topic,
//! then the checkpoint (batch number, next offset per partition, window state) is written —
//! that write is the commit. Only then are in-memory views (the online store) updated and
//! the Kafka offsets committed. On start, files of batches after the checkpoint are deleted
//! and records before the checkpoint's offsets are skipped, so a crash anywhere neither
//! loses nor duplicates offline rows.

use std::{collections::BTreeMap, future::Future, time::Duration};

use mlops_kafka::{BatchConsumer, ConsumerMetrics, KafkaConfig, Producer, Record};
use mlops_runtime::JobReporter;
use polars::prelude::DataFrame;
use prometheus_client::{
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info};

use crate::store::{FeatureStore, batch_number};

/// The durable position of a job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Last batch made durable (0: none yet).
    pub batch: u64,
    /// Next offset to process, by `topic/partition`.
    pub offsets: BTreeMap<String, i64>,
    /// Newest event time per source partition.
    #[serde(default)]
    pub watermarks: BTreeMap<i32, i64>,
    /// Window state at this checkpoint.
    pub buffer: Option<String>,
}

impl Checkpoint {
    fn key(record: &Record) -> String {
        format!("{}/{}", record.topic, record.partition)
    }

    /// Whether `record` is already inside a durable batch.
    pub fn covers(&self, record: &Record) -> bool {
        self.offsets
            .get(&Self::key(record))
            .is_some_and(|next| record.offset < *next)
    }

    fn advance(&mut self, records: &[Record]) {
        for record in records {
            let next = self.offsets.entry(Self::key(record)).or_insert(0);
            *next = (*next).max(record.offset + 1);
        }
    }
}

/// Why [`wait_caught_up`] gave up.
#[derive(Debug, thiserror::Error)]
pub enum CatchUpError {
    #[error("{records} records behind {topic}")]
    Behind { records: i64, topic: String },
    #[error("{0}")]
    Unavailable(String),
}

/// Waits until the job checkpointed under `state_prefix` has made durable every record
/// `topic` held when called (its end offsets then), or `deadline` passes. A job reading a
/// topic that stays quiet is caught up as soon as it has read what is there, which an
/// event-time watermark would never say of an idle partition.
pub async fn wait_caught_up(
    store: &FeatureStore,
    kafka: &KafkaConfig,
    state_prefix: &str,
    topic: &str,
    deadline: tokio::time::Instant,
) -> Result<(), CatchUpError> {
    let ends = end_offsets(kafka, topic, deadline).await?;
    wait_caught_up_to(store, state_prefix, topic, &ends, deadline).await
}

/// Where each partition of `topic` ends now: what a later [`wait_caught_up_to`] waits for.
pub async fn end_offsets(
    kafka: &KafkaConfig,
    topic: &str,
    deadline: tokio::time::Instant,
) -> Result<BTreeMap<i32, i64>, CatchUpError> {
    let timeout = deadline
        .saturating_duration_since(tokio::time::Instant::now())
        .max(Duration::from_secs(1));
    mlops_kafka::end_offsets(kafka, topic, timeout)
        .await
        .map_err(|e| CatchUpError::Unavailable(e.to_string()))
}

/// Waits until the job of `state_prefix` has consumed `topic` up to `ends`.
pub async fn wait_caught_up_to(
    store: &FeatureStore,
    state_prefix: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    deadline: tokio::time::Instant,
) -> Result<(), CatchUpError> {
    let path = format!("{state_prefix}checkpoint.json");
    // The checkpoint is the job's durable position; it is rewritten once per batch, so a
    // short poll of it costs one small read.
    let mut poll = tokio::time::interval(Duration::from_millis(50));
    loop {
        poll.tick().await;
        let checkpoint: Checkpoint = store
            .get_json(&path)
            .await
            .map_err(|e| CatchUpError::Unavailable(e.to_string()))?
            .unwrap_or_default();
        let behind: i64 = ends
            .iter()
            .map(|(partition, end)| {
                let next = checkpoint
                    .offsets
                    .get(&format!("{topic}/{partition}"))
                    .copied()
                    .unwrap_or(0);
                (end - next).max(0)
            })
            .sum();
        if behind == 0 {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CatchUpError::Behind {
                records: behind,
                topic: topic.to_owned(),
            });
        }
    }
}

/// What a job made of one batch, besides the files it wrote.
#[derive(Default)]
pub struct Processed {
    /// Records to dead-letter: index in the batch, error class, reason.
    pub dead_letters: Vec<(usize, &'static str, String)>,
    /// Window state after the batch, when the job keeps one.
    pub buffer: Option<DataFrame>,
    pub watermarks: BTreeMap<i32, i64>,
}

/// A job run by [`run`].
pub trait BatchJob: Send + 'static {
    fn name(&self) -> String;
    /// Where the checkpoint lives (ends with `/`).
    fn state_prefix(&self) -> String;
    /// Where the batch files live (ends with `/`).
    fn output_prefix(&self) -> String;
    /// Resumes from `checkpoint` (window state included).
    fn restore(
        &mut self,
        store: &FeatureStore,
        checkpoint: &Checkpoint,
    ) -> impl Future<Output = anyhow::Result<()>> + Send;
    /// Writes the outputs of batch number `batch`.
    fn process(
        &mut self,
        store: &FeatureStore,
        records: &[Record],
        batch: u64,
    ) -> impl Future<Output = anyhow::Result<Processed>> + Send;
    /// Called once the batch's checkpoint is written.
    fn committed(&mut self) -> anyhow::Result<()>;
}

#[derive(Debug, Clone)]
pub struct StreamSettings {
    pub max_records: usize,
    pub max_wait: Duration,
    pub metrics: StreamMetrics,
    /// Where the jobs' consumers count failed offset commits.
    pub consumer_metrics: ConsumerMetrics,
    pub compaction: Compaction,
}

/// How often a job merges its small batch files (see [`FeatureStore::compact`]).
#[derive(Debug, Clone, Copy)]
pub struct Compaction {
    /// Every this many batches (and once at start); 0 turns compaction off.
    pub every_batches: u64,
    /// Date partitions with fewer durable batch files are left alone.
    pub min_files: usize,
}

impl Default for Compaction {
    fn default() -> Self {
        Self {
            every_batches: 50,
            min_files: 16,
        }
    }
}

/// Compacts `job`'s output up to its checkpoint. A failure costs only read speed: logged.
async fn compact<J: BatchJob>(job: &J, store: &FeatureStore, settings: &StreamSettings, upto: u64) {
    if settings.compaction.every_batches == 0 {
        return;
    }
    match store
        .compact(&job.output_prefix(), upto, settings.compaction.min_files)
        .await
    {
        Ok(0) => {}
        Ok(partitions) => info!(job = %job.name(), partitions, upto, "compacted batch files"),
        Err(e) => {
            tracing::warn!(job = %job.name(), error = %e, "compaction failed; will try again")
        }
    }
}

type JobLabel = Vec<(String, String)>;

/// Batches made durable per job. Failures, panics and the failing gauge of the same jobs
/// come from their supervisor (`mlops_feature_stream_failures_total`, `…_panics_total`,
/// `…_failing`), registered under the same prefix by the service.
#[derive(Clone, Default)]
pub struct StreamMetrics {
    batches: Family<JobLabel, Counter>,
}

/// The metric prefix shared by the stream metrics and the stream jobs' supervisor.
pub const METRICS_PREFIX: &str = "mlops_feature_stream";

impl std::fmt::Debug for StreamMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamMetrics").finish_non_exhaustive()
    }
}

impl StreamMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        registry.register(
            format!("{METRICS_PREFIX}_batches"),
            "Micro-batches made durable, by stream job",
            metrics.batches.clone(),
        );
        metrics
    }

    fn batch_done(&self, job: &str) {
        self.batches
            .get_or_create(&vec![("job".to_owned(), job.to_owned())])
            .inc();
    }
}

/// Where a job reads from and writes to.
#[derive(Clone)]
pub struct Wiring {
    pub store: FeatureStore,
    pub kafka: KafkaConfig,
    pub group: String,
    pub topics: Vec<String>,
    /// Produces dead letters to `<topic>.dlq`.
    pub dead_letters: Producer,
    pub settings: StreamSettings,
}

/// One attempt of a stream job: resumes `job` from its checkpoint and runs it until
/// `cancel` fires. Run it under a [`mlops_runtime::Supervisor`], which starts a fresh
/// attempt (fresh job, same checkpoint) after a failure or a panic.
pub async fn run<J: BatchJob>(
    mut job: J,
    wiring: Wiring,
    cancel: CancellationToken,
    reporter: JobReporter,
) -> anyhow::Result<()> {
    let store = &wiring.store;
    let settings = &wiring.settings;
    let checkpoint_path = format!("{}checkpoint.json", job.state_prefix());
    let mut checkpoint: Checkpoint = store.get_json(&checkpoint_path).await?.unwrap_or_default();
    // Files of batches after the checkpoint belong to a batch that never finished.
    for path in store.list(&job.output_prefix()).await? {
        if batch_number(&path).is_some_and(|n| n > checkpoint.batch) {
            info!(job = %job.name(), %path, "removing output of an unfinished batch");
            store.delete(&path).await?;
        }
    }
    compact(&job, store, settings, checkpoint.batch).await;
    job.restore(store, &checkpoint).await?;
    let consumer = BatchConsumer::new(
        &wiring.kafka,
        &wiring.group,
        &wiring.topics,
        wiring.dead_letters.clone(),
        wiring.settings.consumer_metrics.clone(),
    )?;
    info!(job = %job.name(), batch = checkpoint.batch, "stream job started");
    reporter.started();

    while let Some(records) = consumer
        .next_batch(settings.max_records, settings.max_wait, &cancel)
        .await
    {
        let fresh: Vec<Record> = records
            .iter()
            .filter(|r| !checkpoint.covers(r))
            .cloned()
            .collect();
        tracing::debug!(
            job = %job.name(),
            records = records.len(),
            fresh = fresh.len(),
            first = ?records.first().map(|r| (r.partition, r.offset)),
            last = ?records.last().map(|r| (r.partition, r.offset)),
            "batch received"
        );
        if !fresh.is_empty() {
            let batch = checkpoint.batch + 1;
            let span = mlops_kafka::batch_span(consumer.group(), &fresh);
            let processed = job.process(store, &fresh, batch).instrument(span).await?;
            for (index, class, reason) in &processed.dead_letters {
                consumer.dead_letter(&fresh[*index], class, reason).await?;
            }
            let mut next = checkpoint.clone();
            next.batch = batch;
            next.advance(&fresh);
            next.watermarks = processed.watermarks;
            next.buffer = match processed.buffer {
                Some(mut buffer) => {
                    let path = format!("{}buffer-{batch:012}.parquet", job.state_prefix());
                    store.put_frame(&path, &mut buffer).await?;
                    Some(path)
                }
                None => None,
            };
            store.put_json(&checkpoint_path, &next).await?;
            if let Some(old) = &checkpoint.buffer
                && Some(old) != next.buffer.as_ref()
            {
                store.delete(old).await?;
            }
            checkpoint = next;
            job.committed()?;
            if settings.compaction.every_batches > 0
                && checkpoint
                    .batch
                    .is_multiple_of(settings.compaction.every_batches)
            {
                compact(&job, store, settings, checkpoint.batch).await;
            }
            settings.metrics.batch_done(&job.name());
            reporter.progressed();
        }
        // Kafka's committed offsets trail the checkpoint; they only save re-reading.
        consumer.commit(&records);
    }
    consumer.close().await?;
    Ok(())
}
