//! Publishes committed transitions to `models.lifecycle`, oldest first per model, each
//! marked published only after the broker acknowledged it. A registry that died between
//! its commit and the acknowledgement publishes the transition again when it comes back:
//! at least once on the wire, exactly once per sequence number for a consumer that keeps
//! the highest sequence it applied (the contract subscribers are told to follow).

use std::{sync::Arc, time::Duration};

use mlops_events::{Lineage, ModelLifecycleEvent, topics};
use mlops_kafka::{KafkaConfig, Producer, TopicSpec};
use prometheus_client::{
    metrics::{family::Family, gauge::Gauge},
    registry::Registry,
};
use rdkafka::message::OwnedHeaders;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use super::store::{ModelStore, TransitionRow, VersionRow};

/// Partitions of `models.lifecycle`: keyed by model, so one model's events stay in order.
const PARTITIONS: i32 = 3;

pub struct Publisher {
    pub store: ModelStore,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    /// Woken after every commit.
    pub wake: Arc<Notify>,
    /// `mlops_registry_model_version{model, stage}`: the version in production and in
    /// canary, refreshed after every drain.
    pub stages: Family<Vec<(&'static str, String)>, Gauge>,
}

/// Registers the stage gauge in `registry`.
pub fn stage_gauge(registry: &mut Registry) -> Family<Vec<(&'static str, String)>, Gauge> {
    let stages = Family::default();
    registry.register(
        "mlops_registry_model_version",
        "The version of a model in a stage (production, canary); absent when none is",
        stages.clone(),
    );
    stages
}

/// The event a consumer sees for `transition` of `version`.
pub fn event_of(transition: &TransitionRow, version: &VersionRow) -> ModelLifecycleEvent {
    let lineage = &version.lineage;
    ModelLifecycleEvent {
        event_id: transition.event_id.clone(),
        sequence: transition.sequence,
        model_name: transition.model.clone(),
        version: transition.version as i32,
        stage: transition.to_stage,
        previous_stage: transition.from_stage,
        canary_percent: transition.canary_percent,
        artifact_uri: version.artifact_uri.clone(),
        artifact_sha256: version.sha256.clone(),
        signature: Some(version.signature.clone()),
        metrics: version.metrics.clone().into_iter().collect(),
        lineage: Lineage {
            training_run_id: lineage.training_run_id.clone(),
            snapshot_id: lineage.snapshot_id.clone(),
            feature_view: lineage.feature_view.clone(),
            feature_view_version: lineage.feature_view_version,
            schema_ids: lineage.schema_ids.clone(),
            code_version: lineage.code_version.clone(),
        },
        reason: transition.reason.clone(),
        actor: transition.actor.clone(),
        triggering_event_id: transition.triggering_event_id.clone(),
        occurred_at: transition.at,
        trace_id: transition.trace_id.clone(),
    }
}

impl Publisher {
    /// Drains the outbox whenever woken (and every few seconds), until `cancel` fires.
    /// Failures (broker or Schema Registry unreachable) are retried with backoff; a later
    /// transition of a model never overtakes an earlier one that failed.
    pub async fn run(self, cancel: CancellationToken) {
        let mut topic_ready = false;
        let mut backoff = Duration::from_millis(200);
        loop {
            let work = async {
                if !topic_ready {
                    mlops_kafka::ensure_topics(
                        &self.kafka,
                        &[TopicSpec::new(topics::MODELS_LIFECYCLE, PARTITIONS)],
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    topic_ready = true;
                }
                let published = self.drain().await?;
                self.refresh_stages().await?;
                Ok::<usize, String>(published)
            };
            // A broker that does not answer must not hold the registry's shutdown.
            let outcome = tokio::select! {
                () = cancel.cancelled() => return,
                outcome = work => outcome,
            };
            let wait = match outcome {
                Ok(published) => {
                    if published > 0 {
                        info!(published, "lifecycle events published");
                    }
                    backoff = Duration::from_millis(200);
                    Duration::from_secs(5)
                }
                Err(reason) => {
                    warn!(%reason, retry_in = ?backoff, "lifecycle events not published yet");
                    let wait = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    wait
                }
            };
            tokio::select! {
                () = cancel.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn refresh_stages(&self) -> Result<(), String> {
        let serving = self
            .store
            .serving_versions()
            .await
            .map_err(|e| e.to_string())?;
        self.stages.clear();
        for (model, stage, version) in serving {
            self.stages
                .get_or_create(&vec![("model", model), ("stage", stage)])
                .set(version);
        }
        Ok(())
    }

    /// Publishes every unpublished transition; returns how many.
    async fn drain(&self) -> Result<usize, String> {
        let mut published = 0;
        loop {
            let batch = self
                .store
                .unpublished(100)
                .await
                .map_err(|e| e.to_string())?;
            if batch.is_empty() {
                return Ok(published);
            }
            for transition in batch {
                let version = self
                    .store
                    .version(&transition.model, transition.version)
                    .await
                    .map_err(|e| e.to_string())?;
                let event = event_of(&transition, &version);
                // Published in the flow that decided the transition, as a child of the
                // span that decided it.
                let span = mlops_telemetry::continue_flow(
                    info_span!("lifecycle event", model = %event.model_name,
                        version = event.version, stage = ?event.stage, sequence = event.sequence),
                    transition.traceparent.as_deref(),
                    transition.trace_id.as_deref(),
                );
                self.producer
                    .send_event(
                        topics::MODELS_LIFECYCLE,
                        Some(transition.model.as_bytes()),
                        &event,
                        OwnedHeaders::new(),
                    )
                    .instrument(span)
                    .await
                    .map_err(|e| e.to_string())?;
                self.store
                    .mark_published(&transition.model, transition.sequence)
                    .await
                    .map_err(|e| e.to_string())?;
                published += 1;
            }
        }
    }
}
