//! The training service: trains, tunes and validates models when asked by events.
//!
//! Requests arrive on `training.requests` (or as manual runs over HTTP, or from a spec's
//! schedule) and are recorded with their model's run (`store`, `requests`); the `runner`
//! coalesces them, fetches the spec's snapshot from the feature service (`snapshot`),
//! searches and validates candidates (`trainer`, `spec`; metrics from `mlops_ml::metrics`) and gates the best
//! against the production version on the same holdout (`run`), registers a model that
//! passes with the registry (`mlops_ml::registry`), and publishes each run's result on
//! `training.runs`.

pub mod api;

pub mod requests;
pub mod run;
pub mod runner;
pub mod snapshot;
pub mod spec;
pub mod store;
pub mod trainer;

use std::{path::PathBuf, sync::Arc};

use mlops_events::topics;
use mlops_kafka::Producer;
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;

pub const SERVICE: &str = "training";
pub const DEFAULT_PORT: u16 = mlops_service::ports::TRAINING;

/// Settings of the training service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Base URL of the feature service, where training snapshots come from.
    pub feature_url: String,
    /// Base URL of the model registry, where versions that pass the gate are registered.
    pub registry_url: String,
    /// A run starts no sooner than this after its first request (and after the model's
    /// previous run): requests within it coalesce into one run.
    pub cooldown_ms: u64,
    /// Runs at a time, across models.
    pub max_concurrent_runs: usize,
    /// Model specs (`*.toml`, `*.json`) declared from this directory at start.
    pub specs_dir: Option<PathBuf>,
    /// Consumer group of `training.requests`.
    pub requests_group: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            feature_url: format!("http://127.0.0.1:{}", mlops_service::ports::FEATURE),
            registry_url: format!("http://127.0.0.1:{}", mlops_service::ports::REGISTRY),
            cooldown_ms: 5_000,
            max_concurrent_runs: 1,
            specs_dir: None,
            requests_group: requests::GROUP.to_owned(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub training: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            training: Settings::default(),
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

/// Declares every spec in `dir` (`*.toml`, `*.json`); a spec that does not parse stops
/// the start, naming the file and every field at fault.
async fn declare_specs_from(
    dir: &std::path::Path,
    store: &store::TrainingStore,
) -> anyhow::Result<()> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("training.specs_dir {}: {e}", dir.display()))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| {
            matches!(
                p.extension().and_then(|e| e.to_str()),
                Some("toml" | "json")
            )
        })
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path)?;
        let toml = path.extension().is_some_and(|e| e == "toml");
        let spec = spec::ModelSpec::parse(&text, toml).map_err(|fields| {
            let problems: Vec<String> = fields
                .iter()
                .map(|f| format!("{}: {}", f.field, f.reason))
                .collect();
            anyhow::anyhow!("model spec {}: {}", path.display(), problems.join("; "))
        })?;
        store.put_spec(&spec).await?;
        info!(model = %spec.name, file = %path.display(), "model spec declared");
    }
    Ok(())
}

/// Serves until `cancel` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let Config {
        common,
        training: settings,
    } = config;
    let Some(pool) =
        mlops_service::starting::database(&common, SERVICE, &listener, store::MIGRATIONS, &cancel)
            .await?
    else {
        return Ok(());
    };
    let store = store::TrainingStore::new(pool);
    if let Some(dir) = &settings.specs_dir {
        declare_specs_from(dir, &store).await?;
    }
    let codec = Arc::new(common.codec());
    let producer = Producer::new(&common.kafka, codec.clone())?;
    let http = common.http_client(std::time::Duration::from_secs(300));
    let mut metrics = prometheus_client::registry::Registry::default();
    let consumer_metrics = mlops_kafka::ConsumerMetrics::register(&mut metrics);
    let runner = Arc::new(runner::Runner {
        metrics: runner::RunMetrics::register(&mut metrics),
        store: store.clone(),
        http: http.clone(),
        feature_url: settings.feature_url.trim_end_matches('/').to_owned(),
        registry: mlops_ml::registry::RegistryClient::new(http, &settings.registry_url),
        producer: producer.clone(),
        kafka: common.kafka.clone(),
        wake: Default::default(),
        slots: Arc::new(tokio::sync::Semaphore::new(
            settings.max_concurrent_runs.max(1),
        )),
        cooldown_ms: settings.cooldown_ms as i64,
        region: common.region.clone(),
    });
    let database = store.clone();
    let mut checks = common.readiness_checks();
    checks.push(mlops_runtime::ReadinessCheck::new("database", move || {
        let database = database.clone();
        async move { database.ping().await.map_err(|e| e.to_string()) }
    }));
    let admin = mlops_runtime::AdminState::new(SERVICE, metrics, checks);
    let app = Arc::new(api::App {
        store,
        runner: runner.clone(),
    });
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &common.kafka, producer.clone());
    let router = common
        .protect(
            SERVICE,
            api::router(app),
            &[api::ROUTES],
            Some(auditor),
            &admin,
        )
        .await?;

    let mut tasks = mlops_runtime::TaskSet::new(cancel.child_token());
    tasks.spawn("audit", audit_writer.run(tasks.token()));
    tasks.spawn("scheduler", runner.clone().schedule(tasks.token()));
    tasks.spawn(
        "schedules",
        runner
            .clone()
            .tick_schedules(mlops_events::now_millis(), tasks.token()),
    );
    let requests = requests::Requests { runner, codec };
    // Requests that arrive before the consumer exists wait in the topic.
    mlops_service::spawn_consumer(
        &mut tasks,
        mlops_kafka::ConsumerLoop::new(
            &common.kafka,
            settings.requests_group.clone(),
            vec![topics::TRAINING_REQUESTS.to_owned()],
            producer,
        )
        .with_metrics(consumer_metrics),
        3,
        requests,
    );
    mlops_service::serve_with(&common, tasks, listener, router, cancel).await
}
