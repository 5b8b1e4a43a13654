//! The monitoring service: watches every model's predictions for drift, data quality and
//! performance (with delayed labels), asks for a retraining when production drifts, and
//! judges canaries — publishing `monitoring.drift`, `training.requests` and
//! `monitoring.canary-decisions`, the events that close the loop.
//!
//! `monitor` holds the state and decides (pure); `detector` and `canary` are its
//! statistics; `intake` consumes predictions (every `predictions.<model>` topic), labels,
//! feature rows (every `features.<view>` topic) and `models.lifecycle`, fetching each version's reference (the statistics of the
//! snapshot it was trained on) from the registry and the feature service; `api` reports.

pub mod api;
pub mod canary;
pub mod detector;
pub mod intake;
pub mod monitor;

use std::{sync::Arc, time::Duration};

use mlops_events::topics;
use mlops_kafka::{ConsumerLoop, Producer};
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use monitor::MonitorSettings;

pub const SERVICE: &str = "monitoring";
pub const DEFAULT_PORT: u16 = mlops_service::ports::MONITORING;

/// Settings of the monitoring service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Base URL of the model registry (each version's artifact: task and snapshot).
    pub registry_url: String,
    /// Base URL of the feature service (each snapshot's reference statistics).
    pub feature_url: String,
    /// Consumer group of `models.lifecycle`: the monitor replays it from the start on each
    /// start (a fresh group when empty), as serving does.
    pub lifecycle_group: String,
    /// Windows, thresholds, hysteresis, label joins and canary bake criteria.
    pub policy: MonitorSettings,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            registry_url: format!("http://127.0.0.1:{}", mlops_service::ports::REGISTRY),
            feature_url: format!("http://127.0.0.1:{}", mlops_service::ports::FEATURE),
            lifecycle_group: String::new(),
            policy: MonitorSettings::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub monitoring: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            monitoring: Settings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }
}

/// The service's configuration with its defaults.
pub fn default_config() -> Config {
    Config::default()
}

/// Consumer groups: one per input, stable, so a restart goes on where it stopped.
pub const PREDICTIONS_GROUP: &str = "monitoring.predictions";
pub const LABELS_GROUP: &str = "monitoring.labels";
pub const FEATURES_GROUP: &str = "monitoring.features";

/// Serves until `cancel` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Config {
        common,
        monitoring: settings,
    } = config;
    let http = common.http_client(Duration::from_secs(30));
    let codec = Arc::new(common.codec());
    let producer = Producer::new(&common.kafka, codec.clone())?;
    let mut metrics = prometheus_client::registry::Registry::default();
    let consumer_metrics = mlops_kafka::ConsumerMetrics::register(&mut metrics);
    let shared = Arc::new(intake::Shared::new(
        settings.policy.clone(),
        mlops_ml::registry::RegistryClient::new(http.clone(), &settings.registry_url),
        http,
        settings.feature_url.trim_end_matches('/').to_owned(),
        producer.clone(),
        common.kafka.clone(),
        &mut metrics,
    ));

    let mut tasks = mlops_runtime::TaskSet::new(cancel.child_token());
    let admin = mlops_runtime::AdminState::new(SERVICE, metrics, common.readiness_checks());
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &common.kafka, producer.clone());
    tasks.spawn("audit", audit_writer.run(tasks.token()));
    let router = common
        .protect(
            SERVICE,
            api::router(shared.clone()),
            &[api::ROUTES],
            Some(auditor),
            &admin,
        )
        .await?;

    let lifecycle_group = if settings.lifecycle_group.is_empty() {
        format!("monitoring-{}", mlops_events::new_id())
    } else {
        settings.lifecycle_group.clone()
    };
    let consumers = [
        (
            lifecycle_group,
            topics::MODELS_LIFECYCLE,
            intake::Input::Lifecycle,
        ),
        (
            PREDICTIONS_GROUP.to_owned(),
            // Every prediction topic, present and future, not their dead letters.
            topics::PREDICTIONS_TOPIC_PATTERN,
            intake::Input::Predictions,
        ),
        (
            LABELS_GROUP.to_owned(),
            topics::LABELS,
            intake::Input::Labels,
        ),
        (
            FEATURES_GROUP.to_owned(),
            topics::FEATURES_TOPIC_PATTERN,
            intake::Input::FeatureRows,
        ),
    ];
    for (group, topic, input) in consumers {
        let handler = intake::Intake {
            shared: shared.clone(),
            codec: codec.clone(),
            input,
            region: common.region.clone(),
        };
        mlops_service::spawn_consumer(
            &mut tasks,
            ConsumerLoop::new(
                &common.kafka,
                group,
                vec![topic.to_owned()],
                producer.clone(),
            )
            .with_metrics(consumer_metrics.clone()),
            3,
            handler,
        );
    }
    let ticker = shared.clone();
    let token = tasks.token();
    tasks.spawn("clock", async move {
        let mut every = tokio::time::interval(Duration::from_millis(500));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = token.cancelled() => return Ok::<(), anyhow::Error>(()),
                _ = every.tick() => ticker.tick().await,
            }
        }
    });
    mlops_service::serve_with(&common, tasks, listener, router, cancel).await
}
