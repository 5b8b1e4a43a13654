//! The prediction log: every answer goes to `predictions.<model>` (Avro `PredictionLog`, one
//! record per row) off the request path. A request only tries to put what it answered in a
//! bounded queue; when the queue (or the Kafka client's own) is full its rows are dropped
//! and counted, so the log samples under pressure and the answer is never delayed by it.
//!
//! Cost matters here: the log is most of what a many-row request costs. So a request queues
//! its rows as plain numbers (the columns to log are worked out once per loaded version),
//! and the drain writes each record's Avro straight into one reused buffer and hands it to a
//! producer that does not track records one by one (`mlops_kafka::LogProducer`).

use std::{collections::HashMap, fmt::Write as _, sync::Arc};

use mlops_events::{PredictionLog, PredictionLogRef, ServingRole, topics};
use mlops_kafka::{KafkaConfig, LogProducer, TopicSpec};
use mlops_ml::ModelArtifact;
use mlops_runtime::series::SeriesCache;
use mlops_schema::AvroCodec;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use serde_json::Value as Json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::deployments::Loaded;

/// Answered requests waiting to be written to the log.
pub const QUEUE: usize = 4_096;

/// What a version's log records carry as features: each numeric feature's raw value (what
/// the monitor compares with the training snapshot's statistics), and a categorical
/// feature's encoded inputs (e.g. `currency__EUR`), taken from the model's input vector.
#[derive(Debug, Clone, Default)]
pub struct LogColumns {
    names: Vec<String>,
    sources: Vec<Source>,
}

#[derive(Debug, Clone)]
enum Source {
    /// The request's raw value of the feature at this position among the transforms.
    Raw(usize),
    /// Column `i` of the model's input vector.
    Input(usize),
}

impl LogColumns {
    pub fn of(artifact: &ModelArtifact) -> Self {
        let mut columns = Self::default();
        for (position, (feature, state)) in artifact.transforms.iter().enumerate() {
            if state.encode.is_none() {
                columns.names.push(feature.clone());
                columns.sources.push(Source::Raw(position));
                continue;
            }
            // The encoded inputs a value of this feature becomes, by name.
            for (input, _) in mlops_ml::apply_row(feature, state, &Json::Null) {
                if let Some(i) = artifact.features.iter().position(|f| *f == input) {
                    columns.names.push(input);
                    columns.sources.push(Source::Input(i));
                }
            }
        }
        columns
    }

    pub fn width(&self) -> usize {
        self.names.len()
    }

    /// Appends row `r`'s values (NaN where the request had no number) to `out`; `raw` is the
    /// row's raw values in the transforms' order.
    pub fn values(
        &self,
        raw: &[Json],
        inputs: &ndarray::Array2<f64>,
        r: usize,
        out: &mut Vec<f64>,
    ) {
        for source in &self.sources {
            out.push(match source {
                Source::Raw(position) => raw
                    .get(*position)
                    .and_then(Json::as_f64)
                    .unwrap_or(f64::NAN),
                Source::Input(i) => inputs[[r, *i]],
            });
        }
    }
}

/// One answered (or failed) request, as the log needs it.
pub struct Answered {
    pub model: String,
    pub loaded: Arc<Loaded>,
    pub role: ServingRole,
    pub request_id: String,
    pub entity_id: Option<String>,
    /// Row-major values of `loaded.log_columns` (NaN where a row had no number).
    pub values: Vec<f64>,
    /// Each row's (score, label); empty when the version failed.
    pub answers: crate::oip::Answers,
    pub latency_us: i64,
    pub predicted_at: i64,
    /// The W3C `traceparent` of the request's span (its trace id is the record's `trace_id`).
    pub traceparent: Option<String>,
    /// Why the version could not answer: logged as one record with a NaN output.
    pub error: Option<String>,
}

impl Answered {
    /// The records this request makes.
    fn records(&self) -> u64 {
        self.answers.len().max(1) as u64
    }
}

#[derive(Clone)]
pub struct PredictionLogger {
    queue: mpsc::Sender<Answered>,
    logged: Counter,
    dropped: Counter,
}

/// Where a model's records go: its topic and the schema id they are framed with.
struct Destination {
    topic: String,
    schema_id: u32,
}

impl PredictionLogger {
    /// The logger and the task that drains it into Kafka.
    pub fn new(
        registry: &mut Registry,
        producer: LogProducer,
        codec: Arc<AvroCodec>,
        kafka: KafkaConfig,
        cancel: CancellationToken,
    ) -> (
        Self,
        impl std::future::Future<Output = anyhow::Result<()>> + use<>,
    ) {
        let (queue, mut received) = mpsc::channel::<Answered>(QUEUE);
        let logged = Counter::default();
        let dropped = Counter::default();
        registry.register(
            "mlops_serving_predictions_logged",
            "Predictions handed to the Kafka client for predictions.<model>",
            logged.clone(),
        );
        registry.register(
            "mlops_serving_predictions_dropped",
            "Predictions not logged because the log could not keep up (sampled out)",
            dropped.clone(),
        );
        let undelivered: Counter = Counter::default();
        registry.register(
            "mlops_serving_predictions_undelivered",
            "Predictions handed to the Kafka client that it could not deliver",
            undelivered.clone(),
        );
        let served: Family<Vec<(&'static str, String)>, Counter> = Family::default();
        registry.register(
            "mlops_serving_predictions",
            "Rows answered, by model, version, role (production, canary, shadow) and outcome \
             (ok, error)",
            served.clone(),
        );
        let latency: Family<Vec<(&'static str, String)>, Histogram> =
            Family::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5])
            });
        registry.register(
            "mlops_serving_inference_seconds",
            "Time from a request's arrival to its answer, by model and role",
            latency.clone(),
        );
        let logger = Self {
            queue,
            logged: logged.clone(),
            dropped: dropped.clone(),
        };
        let drain = async move {
            let mut destinations: HashMap<String, Destination> = HashMap::new();
            let rows_served: SeriesCache<(i64, ServingRole, bool), Counter> =
                SeriesCache::default();
            let latencies: SeriesCache<ServingRole, Histogram> = SeriesCache::default();
            let mut record = Vec::with_capacity(1024);
            let mut row_id = String::new();
            let mut complaints = Complaints::default();
            let mut reports = tokio::time::interval(std::time::Duration::from_millis(100));
            loop {
                let answered = tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = reports.tick() => {
                        producer.poll();
                        let failed = producer.failed();
                        undelivered.inc_by(failed.saturating_sub(undelivered.get()));
                        continue;
                    }
                    next = received.recv() => match next {
                        Some(a) => a,
                        None => break,
                    },
                };
                // Counted here, off the request's path (a request the queue had no room
                // for is counted in `dropped` instead), through handles found with one
                // lookup rather than label sets built per request.
                let ok = answered.error.is_none();
                let role = answered.role;
                let version = answered.loaded.version;
                rows_served
                    .get(&answered.model, (version, role, ok), || {
                        served
                            .get_or_create(&vec![
                                ("model", answered.model.clone()),
                                ("version", version.to_string()),
                                ("role", role.as_str().to_owned()),
                                ("outcome", if ok { "ok" } else { "error" }.to_owned()),
                            ])
                            .clone()
                    })
                    .inc_by(answered.records());
                latencies
                    .get(&answered.model, role, || {
                        latency
                            .get_or_create(&vec![
                                ("model", answered.model.clone()),
                                ("role", role.as_str().to_owned()),
                            ])
                            .clone()
                    })
                    .observe(answered.latency_us as f64 / 1e6);
                if !destinations.contains_key(&answered.model) {
                    match destination(&kafka, &codec, &answered.model).await {
                        Ok(d) => {
                            destinations.insert(answered.model.clone(), d);
                        }
                        Err(reason) => {
                            dropped.inc_by(answered.records());
                            complaints.note(&answered.model, &reason);
                            continue;
                        }
                    }
                }
                let Some(to) = destinations.get(&answered.model) else {
                    continue;
                };
                let columns = &answered.loaded.log_columns;
                let width = columns.width();
                let rows = answered.answers.len();
                let mut features: Vec<(&str, f64)> = Vec::with_capacity(width);
                for r in 0..answered.records() as usize {
                    features.clear();
                    if let Some(values) = answered.values.get(r * width..(r + 1) * width) {
                        features.extend(
                            columns
                                .names
                                .iter()
                                .zip(values)
                                .filter(|(_, v)| !v.is_nan())
                                .map(|(name, v)| (name.as_str(), *v)),
                        );
                    }
                    let request_id = if rows <= 1 {
                        answered.request_id.as_str()
                    } else {
                        row_id.clear();
                        let _ = write!(row_id, "{}#{r}", answered.request_id);
                        row_id.as_str()
                    };
                    let (output, label) = answered
                        .answers
                        .get(r)
                        .map_or((f64::NAN, None), |(o, l)| (*o, l.as_deref()));
                    record.clear();
                    mlops_schema::write_frame_header(&mut record, to.schema_id);
                    PredictionLogRef {
                        request_id,
                        entity_id: answered.entity_id.as_deref(),
                        model_name: &answered.model,
                        model_version: answered.loaded.version as i32,
                        role: answered.role,
                        features: &features,
                        output,
                        predicted_label: label,
                        latency_us: answered.latency_us,
                        predicted_at: answered.predicted_at,
                        trace_id: answered
                            .traceparent
                            .as_deref()
                            .and_then(mlops_telemetry::trace_id_in),
                        error: answered.error.as_deref(),
                    }
                    .write_avro(&mut record);
                    let key = answered.entity_id.as_deref().unwrap_or(request_id);
                    match producer.enqueue(
                        &to.topic,
                        Some(key.as_bytes()),
                        &record,
                        answered.traceparent.as_deref(),
                    ) {
                        Ok(()) => {
                            logged.inc();
                        }
                        Err(reason) => {
                            dropped.inc();
                            complaints.note(&to.topic, &reason);
                        }
                    }
                }
            }
            producer.flush(std::time::Duration::from_secs(2));
            Ok(())
        };
        (logger, drain)
    }

    /// Queues `answered` for the log, or counts its rows dropped when the queue is full.
    pub fn log(&self, answered: Answered) {
        let records = answered.records();
        if self.queue.try_send(answered).is_err() {
            self.dropped.inc_by(records);
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub fn logged(&self) -> u64 {
        self.logged.get()
    }
}

/// Warnings about records not logged, at most one per interval: under pressure every
/// record may fail the same way, and a warning per record would cost more than the record.
#[derive(Default)]
struct Complaints {
    last: Option<std::time::Instant>,
    since: u64,
}

impl Complaints {
    const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    fn note(&mut self, about: &str, reason: &dyn std::fmt::Display) {
        self.since += 1;
        if self
            .last
            .is_none_or(|last| last.elapsed() >= Self::INTERVAL)
        {
            warn!(%about, %reason, not_logged = self.since, "predictions not logged (sampled out)");
            self.last = Some(std::time::Instant::now());
            self.since = 0;
        }
    }
}

/// The topic of `model`'s predictions (created when missing) and the schema id to frame
/// its records with (registered when missing).
async fn destination(
    kafka: &KafkaConfig,
    codec: &AvroCodec,
    model: &str,
) -> Result<Destination, String> {
    let topic = topics::predictions(model);
    mlops_kafka::ensure_topics(kafka, &[TopicSpec::new(&topic, 3)])
        .await
        .map_err(|e| format!("{topic} cannot be created yet: {e}"))?;
    let schema_id = codec
        .schema_id::<PredictionLog>(&topic)
        .await
        .map_err(|e| format!("the schema of {topic} cannot be registered yet: {e}"))?;
    Ok(Destination { topic, schema_id })
}

impl std::fmt::Debug for PredictionLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLogger").finish_non_exhaustive()
    }
}

/// Shared by the request handlers.
pub type Logger = Arc<PredictionLogger>;
