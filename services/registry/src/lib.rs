//! The registry service: the platform's Confluent-compatible Schema Registry and its model
//! registry, on one port and one database (SQLite by default, PostgreSQL by URL, same
//! code). Model artifacts live in an object store (a local directory, or S3 by URL),
//! signed with the registry's Ed25519 key; every model change is published to
//! `models.lifecycle` from an outbox.

pub mod audit;
pub mod compatibility;
pub mod models;
pub mod schema_registry;
pub mod store;

use std::{path::PathBuf, sync::Arc};

use mlops_events::topics;
use mlops_kafka::{ConsumerLoop, Producer};
use mlops_runtime::{AdminState, ReadinessCheck};
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::{net::TcpListener, sync::Notify};
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub use store::Store;

pub const SERVICE: &str = "registry";
pub const DEFAULT_PORT: u16 = mlops_service::ports::REGISTRY;

/// Settings of the model registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Object store of the artifacts: a directory, `file:///dir` or `s3://bucket/prefix`;
    /// `<data dir>/artifacts` when unset.
    pub artifacts_url: Option<String>,
    /// The Ed25519 secret key artifacts are signed with (32 bytes, hex; a secret: mount
    /// it); generated at `<data dir>/signing.key` (mode 0600) when unset and missing.
    pub signing_key_file: Option<PathBuf>,
    /// Share of traffic a new version gets when it enters canary, in percent.
    pub first_canary_percent: f64,
    /// Largest registration body (the artifact travels in it): a forest of many deep
    /// trees is tens of megabytes.
    pub max_artifact_bytes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            artifacts_url: None,
            signing_key_file: None,
            first_canary_percent: 10.0,
            max_artifact_bytes: 256 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub registry: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            registry: Settings::default(),
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

/// The registry's HTTP API (Schema Registry, model registry and admin endpoints).
pub async fn router(
    common: &mlops_service::CommonConfig,
    store: Arc<Store>,
    models: Arc<models::api::Models>,
    admin: &AdminState,
    auditor: mlops_service::audit::Auditor,
    audit_log: Arc<audit::AuditLog>,
) -> anyhow::Result<axum::Router> {
    common
        .protect(
            SERVICE,
            schema_registry::router(store)
                .merge(models::api::router(models))
                .merge(audit::router(audit_log)),
            &[schema_registry::ROUTES, models::api::ROUTES, audit::ROUTES],
            Some(auditor),
            admin,
        )
        .await
}

/// Serves until `cancel` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let common = &config.common;
    let Some(pool) =
        mlops_service::starting::database(common, SERVICE, &listener, store::MIGRATIONS, &cancel)
            .await?
    else {
        return Ok(());
    };
    let store = Arc::new(Store::new(pool));
    let model_store = models::store::ModelStore::new(store.pool().clone());
    let artifacts_url = config
        .registry
        .artifacts_url
        .clone()
        .unwrap_or_else(|| common.data_dir.join("artifacts").display().to_string());
    let key_file = config
        .registry
        .signing_key_file
        .clone()
        .unwrap_or_else(|| common.data_dir.join("signing.key"));
    let wake = Arc::new(Notify::new());
    let models = Arc::new(models::api::Models {
        store: model_store.clone(),
        objects: mlops_service::objects::open(&artifacts_url)?,
        artifacts_url,
        signer: mlops_ml::Signer::from_secret_file(&key_file)?,
        wake: wake.clone(),
        first_canary_percent: config.registry.first_canary_percent,
        max_artifact_bytes: config.registry.max_artifact_bytes,
        sealer: common.sealer()?,
    });

    // The registry is its own Schema Registry: its events are encoded through the API it
    // serves (the configured URL, which points here unless a Confluent registry is used).
    let codec = Arc::new(common.codec());
    let producer = Producer::new(&common.kafka, codec.clone())?;
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &common.kafka, producer.clone());
    let mut metrics = prometheus_client::registry::Registry::default();
    let consumer_metrics = mlops_kafka::ConsumerMetrics::register(&mut metrics);
    let publisher = models::outbox::Publisher {
        store: model_store.clone(),
        producer: producer.clone(),
        kafka: common.kafka.clone(),
        wake: wake.clone(),
        stages: models::outbox::stage_gauge(&mut metrics),
    };
    let mut background = tokio::task::JoinSet::new();
    let cancel_writer = cancel.clone();
    background.spawn(publisher.run(cancel.clone()));
    background.spawn(async move {
        let _ = audit_writer.run(cancel_writer).await;
    });
    let decisions = models::decisions::Decisions {
        store: model_store,
        codec: codec.clone(),
        wake,
        auditor: auditor.clone(),
    };
    // One copy of the trail: filled by its consumer, read by the audit API.
    let audit_log = Arc::new(audit::AuditLog {
        pool: store.pool().clone(),
        codec: codec.clone(),
        kafka: common.kafka.clone(),
    });
    background.spawn(consume_audit_log(
        common.kafka.clone(),
        producer.clone(),
        (*audit_log).clone(),
        consumer_metrics.clone(),
        cancel.clone(),
    ));
    background.spawn(consume_decisions(
        common.kafka.clone(),
        producer,
        decisions,
        consumer_metrics,
        cancel.clone(),
    ));

    let database = store.clone();
    let checks = vec![
        ReadinessCheck::new("database", move || {
            let database = database.clone();
            async move { database.ping().await.map_err(|e| e.to_string()) }
        }),
        mlops_service::broker_check(&common.kafka),
    ];
    let admin = AdminState::new(SERVICE, metrics, checks);
    let router = match router(common, store, models, &admin, auditor.clone(), audit_log).await {
        Ok(router) => router,
        Err(e) => {
            cancel.cancel();
            return Err(e);
        }
    };
    let served = common.serve(listener, router, cancel.clone()).await;
    cancel.cancel();
    // The consumer leaves its group within CLOSE_TIMEOUT; the publisher stops at once.
    let drained = async { while background.join_next().await.is_some() {} };
    let grace = mlops_kafka::CLOSE_TIMEOUT + std::time::Duration::from_secs(2);
    if tokio::time::timeout(grace, drained).await.is_err() {
        warn!("background tasks did not stop within {grace:?}");
    }
    served?;
    Ok(())
}

/// Acts on canary decisions until `cancel` fires; a consumer that fails (broker gone) is
/// started again, so the registry's API never goes down with its broker.
async fn consume_decisions(
    kafka: mlops_kafka::KafkaConfig,
    producer: Producer,
    decisions: models::decisions::Decisions,
    metrics: mlops_kafka::ConsumerMetrics,
    cancel: CancellationToken,
) {
    ConsumerLoop::new(
        &kafka,
        models::decisions::GROUP,
        vec![topics::CANARY_DECISIONS.to_owned()],
        producer,
    )
    .with_metrics(metrics)
    .run_until_cancelled(3, decisions, cancel)
    .await;
}

/// Copies `audit.log` into the database for queries, until `cancel` fires.
async fn consume_audit_log(
    kafka: mlops_kafka::KafkaConfig,
    producer: Producer,
    log: audit::AuditLog,
    metrics: mlops_kafka::ConsumerMetrics,
    cancel: CancellationToken,
) {
    // Created here with its settings (kept forever) if no service has written to it yet.
    if let Err(e) = mlops_kafka::ensure_topics(&kafka, &[mlops_service::audit::audit_topic()]).await
    {
        warn!(error = %e, "audit.log not created yet; its consumer retries");
    }
    ConsumerLoop::new(
        &kafka,
        audit::GROUP,
        vec![topics::AUDIT_LOG.to_owned()],
        producer,
    )
    .with_metrics(metrics)
    .run_until_cancelled(mlops_events::audit::AUDIT_PARTITIONS, log, cancel)
    .await;
}
