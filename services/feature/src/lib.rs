//! The feature service: computes feature views from raw topics into the offline and online
//! stores.
//!
//! Today it is the first consumer of every raw topic (`raw.<dataset>`, found by pattern, so
//! datasets declared later are picked up): it checks that each record is Confluent-framed
//! Avro registered under its topic's subject, and dead-letters any that is not, with the
//! reason, without stalling the partition. Feature views extend this intake with their own
//! issue; the service claims nothing more until then.

pub mod intake;

use std::{sync::Arc, time::Duration};

use mlops_kafka::{ConsumerLoop, ConsumerMetrics, Producer};
use mlops_runtime::{AdminState, TaskSet};
use mlops_schema::AvroCodec;
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "feature";
pub const DEFAULT_PORT: u16 = mlops_service::ports::FEATURE;
/// Default consumer group of the raw intake.
pub const RAW_INTAKE_GROUP: &str = "feature.raw-intake";
/// Every raw topic, not their dead-letter topics (dataset names contain no dot).
pub const RAW_TOPICS: &str = r"^raw\.[a-z0-9_-]+$";

/// Settings of the feature service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Consumer group of the raw intake; instances sharing it share the raw partitions.
    pub intake_group: String,
    /// Topics the intake reads: a name, or a pattern starting with `^`.
    pub raw_topics: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            intake_group: RAW_INTAKE_GROUP.to_owned(),
            raw_topics: RAW_TOPICS.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub feature: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            feature: Settings::default(),
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

/// Serves until `cancel` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Config {
        common: config,
        feature: settings,
    } = config;
    let codec = Arc::new(AvroCodec::new(&config.schema_registry.url)?);
    let producer = Producer::new(&config.kafka, codec.clone())?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    let admin = AdminState::new(SERVICE, registry, config.readiness_checks());
    let router = admin.with_http_telemetry(admin.router());

    let mut tasks = TaskSet::new(cancel.child_token());
    let intake = ConsumerLoop::new(
        &config.kafka,
        &settings.intake_group,
        vec![settings.raw_topics.clone()],
        producer,
    )
    .with_metrics(metrics);
    let handler = intake::RawIntake::new(codec, &config.schema_registry.url);
    tasks.spawn("raw-intake", intake.run(handler, tasks.token()));
    tasks.spawn(
        "http",
        mlops_runtime::serve(listener, router, tasks.token()),
    );
    tasks
        .run(cancel.cancelled_owned(), Duration::from_secs(10))
        .await
        .map_err(anyhow::Error::from)
}
