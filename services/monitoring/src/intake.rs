//! The monitor's inputs and outputs: records from its four subscriptions fed to the
//! `Monitor`, each serving version's reference fetched (on the clock, or at the version's
//! first prediction), and what the monitor decides published (acknowledged by the
//! broker); what could not be published yet waits in order and goes first on the next
//! tick.

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use apache_avro::types::Value as AvroValue;

use mlops_events::{
    DriftEvent, GroundTruthLabel, ModelLifecycleEvent, PredictionLog, TrainingRequest, topics,
};
use mlops_kafka::{
    Handler, HandlerError, KafkaConfig, OwnedHeaders, Producer, Record, TopicSpec, ensure_topics,
};
use mlops_ml::{Manifest, registry::RegistryClient};
use mlops_schema::AvroCodec;
use mlops_telemetry::Traced;
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};
use tracing::{Instrument, Span, debug, info, info_span, warn};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

use crate::monitor::{Action, Monitor, MonitorSettings, VersionInfo};

type Labels = Vec<(&'static str, String)>;

struct Metrics {
    predictions: Family<Labels, Counter>,
    labels: Counter,
    label_lag: Histogram,
    drift_score: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    performance: Family<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    drift_events: Family<Labels, Counter>,
    decisions: Family<Labels, Counter>,
    foreign: Family<Labels, Counter>,
}

impl Metrics {
    fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            predictions: Family::default(),
            labels: Counter::default(),
            label_lag: Histogram::new([
                1.0, 5.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 21600.0, 86400.0,
            ]),
            drift_score: Family::default(),
            performance: Family::default(),
            drift_events: Family::default(),
            decisions: Family::default(),
            foreign: Family::default(),
        };
        registry.register(
            "mlops_monitoring_predictions",
            "Predictions observed, by model and role",
            metrics.predictions.clone(),
        );
        registry.register(
            "mlops_monitoring_labels",
            "Labels observed",
            metrics.labels.clone(),
        );
        registry.register(
            "mlops_monitoring_label_lag_seconds",
            "Delay from a prediction to its label",
            metrics.label_lag.clone(),
        );
        registry.register(
            "mlops_monitoring_drift_score",
            "The latest window's drift statistic, by model, version, feature and statistic",
            metrics.drift_score.clone(),
        );
        registry.register(
            "mlops_monitoring_performance",
            "The latest labelled window's metric, by model, version and metric",
            metrics.performance.clone(),
        );
        registry.register(
            "mlops_monitoring_drift_events",
            "Drift incidents published, by model and severity",
            metrics.drift_events.clone(),
        );
        registry.register(
            "mlops_monitoring_canary_decisions",
            "Canary verdicts published, by model and decision",
            metrics.decisions.clone(),
        );
        registry.register(
            "mlops_monitoring_foreign_records",
            "Records of another residency region not consumed, by topic",
            metrics.foreign.clone(),
        );
        metrics
    }
}

pub struct Shared {
    pub monitor: Mutex<Monitor>,
    registry: RegistryClient,
    http: reqwest::Client,
    feature_url: String,
    producer: Producer,
    kafka: KafkaConfig,
    /// Whether the topics published to are known to exist.
    provisioned: AtomicBool,
    metrics: Metrics,
    unsent: Mutex<Vec<Outgoing>>,
    /// The span contexts of a model's latest predictions (their requests' spans): a drift
    /// event links to them, the sample of the traffic that made up its window.
    samples: Mutex<HashMap<String, VecDeque<SpanContext>>>,
    /// Where each flow (by trace id) was last seen here, as a W3C `traceparent`: the drift
    /// span that opened it, then the span its canary's lifecycle event was processed in. A
    /// verdict or a repeated request continues the flow as a child of that span.
    flows: Mutex<HashMap<String, String>>,
}

/// Predictions a drift event links to, per model.
const SAMPLE_LINKS: usize = 16;
/// Flows remembered; beyond this the map starts again (a flow then continues by trace id).
const MAX_FLOWS: usize = 4096;

/// A monitoring output on its way to the broker, with the span its records are sent in, so
/// their `traceparent` headers name it. A drift incident opens a new trace — the
/// remediation flow — whose id the drift event and its training request carry (and the
/// run, the registered version and its lifecycle events after them); a canary verdict
/// carries the id of the flow that brought the candidate.
struct Outgoing {
    action: Action,
    span: Span,
}

impl Shared {
    pub fn new(
        settings: MonitorSettings,
        registry: RegistryClient,
        http: reqwest::Client,
        feature_url: String,
        producer: Producer,
        kafka: KafkaConfig,
        metrics: &mut Registry,
    ) -> Self {
        Self {
            monitor: Mutex::new(Monitor::new(settings)),
            registry,
            http,
            feature_url,
            producer,
            kafka,
            provisioned: AtomicBool::new(false),
            metrics: Metrics::new(metrics),
            unsent: Mutex::new(Vec::new()),
            samples: Mutex::new(HashMap::new()),
            flows: Mutex::new(HashMap::new()),
        }
    }

    fn monitor(&self) -> std::sync::MutexGuard<'_, Monitor> {
        self.monitor.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The task and reference statistics of a version: its artifact (verified) names the
    /// snapshot, whose manifest carries the statistics.
    async fn version_info(&self, model: &str, version: i32) -> Result<VersionInfo, String> {
        let artifact = self.registry.artifact(model, i64::from(version)).await?;
        let url = format!(
            "{}/v1/training-sets/{}",
            self.feature_url, artifact.snapshot_id
        );
        let response = self
            .http
            .get(&url)
            .traced()
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        let manifest: Manifest = response
            .json()
            .await
            .map_err(|e| format!("{url}: not a snapshot manifest: {e}"))?;
        Ok(VersionInfo {
            task: artifact.task,
            view: artifact.view,
            snapshot_id: artifact.snapshot_id,
            reference: manifest.statistics,
        })
    }

    /// Fetches the references of the versions now serving, closes due windows, judges
    /// canaries, publishes what follows, refreshes the gauges.
    pub async fn tick(&self) {
        // Here rather than on each lifecycle event: replaying the topic at start goes
        // through every version that ever served, and only the current ones matter. A
        // version is then watched from its first feature row, not its first prediction.
        let wanted = self.monitor().wanted_info();
        for (model, version) in wanted {
            match self.version_info(&model, version).await {
                Ok(info) => self.monitor().set_info(&model, version, Arc::new(info)),
                // Asked again on the next tick, and by the version's first prediction.
                Err(e) => debug!(%model, version, error = %e, "a reference cannot be read yet"),
            }
        }
        let mut actions =
            std::mem::take(&mut *self.unsent.lock().unwrap_or_else(|e| e.into_inner()));
        let decided = self.monitor().tick(mlops_events::now_millis());
        actions.extend(self.outgoing(decided));
        self.publish(actions).await;
        let latest = self.monitor().latest();
        for (model, version, drift, performance) in latest {
            for (feature, statistic, value) in drift {
                self.metrics
                    .drift_score
                    .get_or_create(&vec![
                        ("model", model.clone()),
                        ("version", version.to_string()),
                        ("feature", feature),
                        ("statistic", statistic),
                    ])
                    .set(value);
            }
            for (metric, value) in performance {
                self.metrics
                    .performance
                    .get_or_create(&vec![
                        ("model", model.clone()),
                        ("version", version.to_string()),
                        ("metric", metric),
                    ])
                    .set(value);
            }
        }
    }

    /// The monitor's new actions, each in its span (trace ids stamped, the report told).
    fn outgoing(&self, actions: Vec<Action>) -> Vec<Outgoing> {
        let actions: Vec<Action> = actions
            .into_iter()
            .map(|action| match action {
                // Asked again within the incident's trace.
                Action::Retrain(mut request) => {
                    request.trace_id = request
                        .triggering_event_id
                        .as_deref()
                        .and_then(|id| self.monitor().drift_trace(&request.model_name, id));
                    Action::Retrain(request)
                }
                other => other,
            })
            .collect();
        let outgoing: Vec<Outgoing> = actions.into_iter().map(|a| self.traced(a)).collect();
        let mut monitor = self.monitor();
        for out in &outgoing {
            if let Action::Drift(event, _) = &out.action {
                monitor.drift_traced(&event.model_name, &event.event_id, event.trace_id.clone());
            }
        }
        outgoing
    }

    /// `action` in its span: a drift incident opens a new trace, linked to the latest
    /// predictions of the model; a repeated request and a canary verdict continue the flow
    /// they belong to.
    fn traced(&self, action: Action) -> Outgoing {
        match action {
            Action::Drift(mut event, mut request) => {
                let span = info_span!(parent: None, "drift detected",
                    model = %event.model_name, version = event.model_version,
                    severity = ?event.severity, drift_event = %event.event_id);
                let samples = lock(&self.samples);
                for sample in samples.get(&event.model_name).into_iter().flatten() {
                    span.add_link(sample.clone());
                }
                drop(samples);
                event.trace_id = mlops_telemetry::trace_id_of(&span);
                if let Some(request) = &mut request {
                    request.trace_id = event.trace_id.clone();
                }
                if let (Some(trace), Some(parent)) =
                    (&event.trace_id, mlops_telemetry::traceparent_of(&span))
                {
                    self.remember_flow(trace, parent);
                }
                Outgoing {
                    action: Action::Drift(event, request),
                    span,
                }
            }
            Action::Retrain(request) => {
                let span = self.continue_flow(
                    info_span!("retraining asked again", model = %request.model_name),
                    request.trace_id.as_deref(),
                );
                Outgoing {
                    action: Action::Retrain(request),
                    span,
                }
            }
            Action::Decide(decision) => {
                let span = self.continue_flow(
                    info_span!("canary verdict", model = %decision.model_name,
                        version = decision.canary_version, decision = ?decision.decision),
                    decision.trace_id.as_deref(),
                );
                Outgoing {
                    action: Action::Decide(decision),
                    span,
                }
            }
        }
    }

    fn continue_flow(&self, span: Span, trace_id: Option<&str>) -> Span {
        let parent = trace_id.and_then(|t| lock(&self.flows).get(t).cloned());
        mlops_telemetry::continue_flow(span, parent.as_deref(), trace_id)
    }

    fn remember_flow(&self, trace_id: &str, traceparent: String) {
        let mut flows = lock(&self.flows);
        if flows.len() >= MAX_FLOWS {
            flows.clear();
        }
        flows.insert(trace_id.to_owned(), traceparent);
    }

    /// Keeps the span context of a prediction's request among the model's latest.
    fn sample(&self, model: &str, record: &Record) {
        let Some(context) = record.trace_context() else {
            return;
        };
        let mut samples = lock(&self.samples);
        let latest = samples.entry(model.to_owned()).or_default();
        if latest.len() == SAMPLE_LINKS {
            latest.pop_front();
        }
        latest.push_back(context.span().span_context().clone());
    }

    /// Publishes `actions` in order; from the first that fails on, they wait for the next
    /// tick.
    async fn publish(&self, actions: Vec<Outgoing>) {
        let mut actions = actions.into_iter();
        while let Some(action) = actions.next() {
            let sent = self
                .publish_one(&action.action)
                .instrument(action.span.clone())
                .await;
            if let Err(e) = sent {
                warn!(error = %e, "monitoring events could not be published yet; retrying");
                let mut unsent = self.unsent.lock().unwrap_or_else(|e| e.into_inner());
                unsent.push(action);
                unsent.extend(actions);
                return;
            }
        }
    }

    async fn publish_one(&self, action: &Action) -> Result<(), String> {
        if !self.provisioned.load(Ordering::Acquire) {
            let outputs = [
                TopicSpec::new(topics::MONITORING_DRIFT, 3),
                TopicSpec::new(topics::TRAINING_REQUESTS, 3),
                TopicSpec::new(topics::CANARY_DECISIONS, 3),
            ];
            ensure_topics(&self.kafka, &outputs)
                .await
                .map_err(|e| e.to_string())?;
            self.provisioned.store(true, Ordering::Release);
        }
        {
            match action {
                Action::Drift(event, request) => {
                    self.publish_drift(event, request.as_ref()).await?
                }
                Action::Retrain(request) => {
                    let key = Some(request.model_name.as_bytes());
                    self.producer
                        .send_event(topics::TRAINING_REQUESTS, key, request, OwnedHeaders::new())
                        .await
                        .map_err(|e| e.to_string())?;
                    info!(model = %request.model_name, request = %request.request_id,
                          "retraining asked again: the incident is still open");
                }
                Action::Decide(decision) => {
                    let sent = self
                        .producer
                        .send_event(
                            topics::CANARY_DECISIONS,
                            Some(decision.model_name.as_bytes()),
                            decision,
                            OwnedHeaders::new(),
                        )
                        .await;
                    sent.map_err(|e| e.to_string())?;
                    info!(model = %decision.model_name, version = decision.canary_version,
                          verdict = ?decision.decision, reason = %decision.reason, "canary verdict");
                    self.metrics
                        .decisions
                        .get_or_create(&vec![
                            ("model", decision.model_name.clone()),
                            (
                                "decision",
                                format!("{:?}", decision.decision).to_lowercase(),
                            ),
                        ])
                        .inc();
                }
            }
        }
        Ok(())
    }

    async fn publish_drift(
        &self,
        event: &DriftEvent,
        request: Option<&TrainingRequest>,
    ) -> Result<(), String> {
        let key = Some(event.model_name.as_bytes());
        self.producer
            .send_event(topics::MONITORING_DRIFT, key, event, OwnedHeaders::new())
            .await
            .map_err(|e| e.to_string())?;
        info!(model = %event.model_name, version = event.model_version, severity = ?event.severity,
              features = ?event.features.iter().map(|f| &f.feature).collect::<Vec<_>>(), "drift");
        self.metrics
            .drift_events
            .get_or_create(&vec![
                ("model", event.model_name.clone()),
                ("severity", format!("{:?}", event.severity).to_lowercase()),
            ])
            .inc();
        if let Some(request) = request {
            self.producer
                .send_event(topics::TRAINING_REQUESTS, key, request, OwnedHeaders::new())
                .await
                .map_err(|e| e.to_string())?;
            info!(model = %request.model_name, request = %request.request_id, "retraining asked for");
        }
        Ok(())
    }
}

/// A feature row's values as the monitor reads them: numbers and booleans by name, a
/// category as `feature__value` = 1, nulls left out.
fn feature_values(row: &AvroValue) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    let AvroValue::Record(fields) = row else {
        return out;
    };
    for (name, value) in fields {
        if mlops_events::FEATURE_ROW_METADATA.contains(&name.as_str()) {
            continue;
        }
        let value = match value {
            AvroValue::Union(_, inner) => inner.as_ref(),
            other => other,
        };
        let number = match value {
            AvroValue::Double(x) => Some(*x),
            AvroValue::Float(x) => Some(f64::from(*x)),
            AvroValue::Long(x) => Some(*x as f64),
            AvroValue::Int(x) => Some(f64::from(*x)),
            AvroValue::Boolean(b) => Some(f64::from(u8::from(*b))),
            AvroValue::String(category) => {
                out.insert(format!("{name}__{category}"), 1.0);
                None
            }
            _ => None,
        };
        if let Some(number) = number {
            out.insert(name.clone(), number);
        }
    }
    out
}

/// Which subscription a handler serves.
#[derive(Debug, Clone, Copy)]
pub enum Input {
    Lifecycle,
    Predictions,
    Labels,
    /// Every `features.<view>` topic.
    FeatureRows,
}

#[derive(Clone)]
pub struct Intake {
    pub shared: Arc<Shared>,
    pub codec: Arc<AvroCodec>,
    pub input: Input,
    /// Residency region of this monitor: predictions, labels and feature rows of another
    /// region are not consumed (skipped, and counted).
    pub region: Option<String>,
}

impl Handler for Intake {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let shared = &self.shared;
        if let Some(reason) = record.foreign_region(self.region.as_deref()) {
            shared
                .metrics
                .foreign
                .get_or_create(&vec![("topic", record.topic.clone())])
                .inc();
            debug!(topic = %record.topic, %reason, "record of another region not consumed");
            return Ok(());
        }
        match self.input {
            Input::Lifecycle => {
                let event: ModelLifecycleEvent = self.codec.decode(payload).await?;
                // A canary's verdict will continue its flow from here.
                if let (Some(trace), Some(here)) =
                    (&event.trace_id, mlops_telemetry::current_traceparent())
                    && mlops_telemetry::trace_id_in(&here) == Some(trace.as_str())
                {
                    shared.remember_flow(trace, here);
                }
                shared.monitor().lifecycle(&event);
            }
            Input::FeatureRows => {
                let Some(view) = record.topic.strip_prefix("features.") else {
                    return Ok(());
                };
                // Only the views production reads are worth decoding.
                if !shared.monitor().watches(view) {
                    return Ok(());
                }
                let decoded = self.codec.decode_record(payload).await?;
                let features = feature_values(&decoded.value);
                shared
                    .monitor()
                    .feature_row(view, &features, mlops_events::now_millis());
            }
            Input::Labels => {
                let label: GroundTruthLabel = self.codec.decode(payload).await?;
                shared.metrics.labels.inc();
                let lag = (label.received_at - label.event_time).max(0) as f64 / 1000.0;
                shared.metrics.label_lag.observe(lag);
                shared.monitor().label(&label);
            }
            Input::Predictions => {
                let log: PredictionLog = self.codec.decode(payload).await?;
                shared.sample(&log.model_name, record);
                let needs = shared
                    .monitor()
                    .needs_info(&log.model_name, log.model_version);
                if needs {
                    // Until its reference is known, a version's traffic waits (retried):
                    // drift measured against nothing would be no measure.
                    let info = shared
                        .version_info(&log.model_name, log.model_version)
                        .await
                        .map_err(|e| {
                            HandlerError::retry(format!(
                                "the reference of {} version {} cannot be read yet: {e}",
                                log.model_name, log.model_version
                            ))
                        })?;
                    shared
                        .monitor()
                        .set_info(&log.model_name, log.model_version, Arc::new(info));
                }
                shared
                    .metrics
                    .predictions
                    .get_or_create(&vec![
                        ("model", log.model_name.clone()),
                        ("role", format!("{:?}", log.role).to_lowercase()),
                    ])
                    .inc();
                let actions = shared.monitor().prediction(&log);
                let actions = shared.outgoing(actions);
                shared.publish(actions).await;
            }
        }
        Ok(())
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use mlops_kafka::{Header, OwnedHeaders};

    use super::*;

    fn record(topic: &str, region: &str) -> Record {
        Record {
            topic: topic.to_owned(),
            partition: 0,
            offset: 0,
            key: None,
            // Not Avro: only a record that is read at all can fail on it.
            payload: Some(b"not avro".to_vec()),
            headers: Some(OwnedHeaders::new().insert(Header {
                key: topics::REGION_HEADER,
                value: Some(region.as_bytes()),
            })),
            timestamp_millis: None,
        }
    }

    #[tokio::test]
    async fn records_of_another_region_are_not_consumed() {
        // Nothing here is reached: a record of another region is refused before it is read.
        let unreachable = "http://127.0.0.1:9";
        let kafka = KafkaConfig {
            bootstrap_servers: "127.0.0.1:9".to_owned(),
            ..KafkaConfig::default()
        };
        let codec = Arc::new(AvroCodec::new(unreachable).unwrap());
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(1))
            .build()
            .unwrap();
        let mut registry = Registry::default();
        let shared = Arc::new(Shared::new(
            MonitorSettings::default(),
            RegistryClient::new(http.clone(), unreachable),
            http,
            unreachable.to_owned(),
            Producer::new(&kafka, codec.clone()).unwrap(),
            kafka,
            &mut registry,
        ));
        for input in [Input::Labels, Input::Predictions, Input::FeatureRows] {
            let intake = Intake {
                shared: shared.clone(),
                codec: codec.clone(),
                input,
                region: Some("eu".to_owned()),
            };
            let topic = match input {
                Input::Labels => "labels",
                Input::Predictions => "predictions.m",
                _ => "features.v",
            };
            assert!(
                intake.handle(&record(topic, "ae")).await.is_ok(),
                "{topic}: skipped unread"
            );
            assert!(
                intake.handle(&record(topic, "eu")).await.is_err()
                    || matches!(input, Input::FeatureRows),
                "{topic}: a record of its own region is read (and this one is not Avro)"
            );
            let counted = shared
                .metrics
                .foreign
                .get_or_create(&vec![("topic", topic.to_owned())])
                .get();
            assert_eq!(counted, 1, "{topic}");
        }
    }
}
