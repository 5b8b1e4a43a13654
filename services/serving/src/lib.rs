//! The serving service: answers inference requests with the models in production and
//! canary, over the Open Inference Protocol v2 (`oip`). It rebuilds what it serves from
//! the registry at start and follows `models.lifecycle` from then on (`deployments`,
//! `lifecycle`), verifying every artifact before it loads it and swapping versions without
//! failing a request. Every answer is logged to `predictions.<model>` off the request path
//! (`predictions`).

pub mod deployments;
pub mod lifecycle;
pub mod oip;
pub mod predict;
pub mod predictions;
pub mod rows;

use std::{sync::Arc, time::Duration};

use mlops_events::topics;
use mlops_kafka::{ConsumerLoop, Producer};
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::warn;

pub const SERVICE: &str = "serving";
pub const DEFAULT_PORT: u16 = mlops_service::ports::SERVING;

/// Settings of the serving service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Base URL of the model registry, where versions and artifacts come from.
    pub registry_url: String,
    /// Consumer group of `models.lifecycle`: every instance needs every event, so each has
    /// a group of its own (a fresh one per start when empty).
    pub lifecycle_group: String,
    /// Base URL of the feature service, whose online store answers predictions asked for
    /// by entity id.
    pub feature_url: String,
    /// Bound on that lookup.
    pub feature_timeout_ms: u64,
    /// How long the prediction log's batches wait to fill (`linger.ms` of its producer):
    /// the log is read by the monitor in windows of seconds, so it trades latency for far
    /// fewer, fuller batches.
    pub log_linger_ms: u32,
    /// The most rows one inference request may hold (413 beyond): a request's rows are
    /// scored in one piece, so this bounds what one request may take.
    pub max_rows_per_request: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            registry_url: format!("http://127.0.0.1:{}", mlops_service::ports::REGISTRY),
            lifecycle_group: String::new(),
            feature_url: format!("http://127.0.0.1:{}", mlops_service::ports::FEATURE),
            feature_timeout_ms: 250,
            log_linger_ms: 50,
            max_rows_per_request: 10_000,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub serving: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            serving: Settings::default(),
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
        common,
        serving: settings,
    } = config;
    let http = common.http_client(Duration::from_secs(30));
    let registry = mlops_ml::registry::RegistryClient::new(http.clone(), &settings.registry_url);
    let deployments = Arc::new(deployments::Deployments::new(registry));
    let codec = Arc::new(common.codec());
    let producer = Producer::new(&common.kafka, codec.clone())?;

    let mut tasks = mlops_runtime::TaskSet::new(cancel.child_token());
    let mut metrics = prometheus_client::registry::Registry::default();
    let consumer_metrics = mlops_kafka::ConsumerMetrics::register(&mut metrics);
    let (logger, drain) = predictions::PredictionLogger::new(
        &mut metrics,
        mlops_kafka::LogProducer::new(&common.kafka, settings.log_linger_ms)?
            .in_region(common.region.clone()),
        codec.clone(),
        common.kafka.clone(),
        tasks.token(),
    );
    tasks.spawn("prediction-log", drain);
    let mut checks = common.readiness_checks();
    let loaded = deployments.clone();
    checks.push(mlops_runtime::ReadinessCheck::new("models", move || {
        let ready = loaded.is_ready();
        async move {
            if ready {
                Ok(())
            } else {
                Err("the served models are still being loaded from the registry".to_owned())
            }
        }
    }));
    let admin = mlops_runtime::AdminState::new(SERVICE, metrics, checks);
    let serving = Arc::new(oip::Serving {
        max_rows: settings.max_rows_per_request,
        deployments: deployments.clone(),
        logger,
        online: predict::OnlineFeatures {
            http,
            feature_url: settings.feature_url.trim_end_matches('/').to_owned(),
            timeout: Duration::from_millis(settings.feature_timeout_ms),
        },
    });
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &common.kafka, producer.clone());
    tasks.spawn("audit", audit_writer.run(tasks.token()));
    let router = common
        .protect(
            SERVICE,
            oip::router(serving),
            &[oip::ROUTES],
            Some(auditor),
            &admin,
        )
        .await?;

    let group = if settings.lifecycle_group.is_empty() {
        format!("serving-{}", mlops_events::new_id())
    } else {
        settings.lifecycle_group.clone()
    };
    let token = tasks.token();
    let kafka = common.kafka.clone();
    let handler = lifecycle::Lifecycle {
        deployments: deployments.clone(),
        codec,
    };
    tasks.spawn("models-lifecycle", async move {
        // What serves comes from the registry first; events then keep it current.
        let mut backoff = Duration::from_millis(200);
        while let Err(e) = deployments.rebuild().await {
            warn!(error = %e, "the registry cannot be read yet; serving nothing until it can");
            tokio::select! {
                () = token.cancelled() => return Ok(()),
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
        ConsumerLoop::new(
            &kafka,
            group,
            vec![topics::MODELS_LIFECYCLE.to_owned()],
            producer,
        )
        .with_metrics(consumer_metrics)
        .run_until_cancelled(3, handler, token)
        .await;
        Ok::<(), anyhow::Error>(())
    });
    mlops_service::serve_with(&common, tasks, listener, router, cancel).await
}
