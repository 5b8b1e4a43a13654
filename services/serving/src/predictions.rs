//! The prediction log: every answer goes to `predictions.<model>` (Avro `PredictionLog`)
//! off the request path. A request only tries to put its record in a bounded queue; when
//! the queue (or the Kafka client's own) is full the record is dropped and counted, so the
//! log samples under pressure and the answer is never delayed by it.

use std::{collections::HashSet, sync::Arc};

use mlops_events::{PredictionLog, topics};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, TopicSpec};
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;

/// Records waiting to be encoded and handed to the Kafka client.
pub const QUEUE: usize = 10_000;

#[derive(Clone)]
pub struct PredictionLogger {
    queue: mpsc::Sender<PredictionLog>,
    logged: Counter,
    dropped: Counter,
}

impl PredictionLogger {
    /// The logger and the task that drains it into Kafka.
    pub fn new(
        registry: &mut Registry,
        producer: Producer,
        kafka: KafkaConfig,
        cancel: CancellationToken,
    ) -> (
        Self,
        impl std::future::Future<Output = anyhow::Result<()>> + use<>,
    ) {
        let (queue, mut received) = mpsc::channel::<PredictionLog>(QUEUE);
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
        let logger = Self {
            queue,
            logged: logged.clone(),
            dropped: dropped.clone(),
        };
        let drain = async move {
            let mut topics_made: HashSet<String> = HashSet::new();
            loop {
                let prediction = tokio::select! {
                    () = cancel.cancelled() => return Ok(()),
                    next = received.recv() => match next {
                        Some(p) => p,
                        None => return Ok(()),
                    },
                };
                let topic = topics::predictions(&prediction.model_name);
                if !topics_made.contains(&topic) {
                    match mlops_kafka::ensure_topics(&kafka, &[TopicSpec::new(&topic, 3)]).await {
                        Ok(()) => {
                            topics_made.insert(topic.clone());
                        }
                        Err(e) => warn!(%topic, error = %e, "prediction topic not created yet"),
                    }
                }
                let key = prediction
                    .entity_id
                    .clone()
                    .unwrap_or_else(|| prediction.request_id.clone());
                let sent = match producer.codec().encode(&topic, &prediction).await {
                    Ok(payload) => producer
                        .enqueue_bytes(&topic, Some(key.as_bytes()), &payload, OwnedHeaders::new())
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match sent {
                    Ok(()) => {
                        logged.inc();
                    }
                    Err(reason) => {
                        dropped.inc();
                        warn!(%topic, %reason, "prediction not logged");
                    }
                }
            }
        };
        (logger, drain)
    }

    /// Queues `prediction` for the log, or counts it dropped when the queue is full.
    pub fn log(&self, prediction: PredictionLog) {
        if self.queue.try_send(prediction).is_err() {
            self.dropped.inc();
        }
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.get()
    }

    pub fn logged(&self) -> u64 {
        self.logged.get()
    }
}

impl std::fmt::Debug for PredictionLogger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PredictionLogger").finish_non_exhaustive()
    }
}

/// Shared by the request handlers.
pub type Logger = Arc<PredictionLogger>;
