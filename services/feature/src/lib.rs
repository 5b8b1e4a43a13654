//! The feature service: computes feature views from raw topics into the offline and online
//! stores.
//!
//! - The raw intake reads every raw topic (`raw.<dataset>`, found by pattern, so datasets
//!   declared later are picked up), checks that each record is Confluent-framed Avro
//!   registered under its topic's subject, and dead-letters any that is not.
//! - Each feature view version runs a stream job (its own consumer group) that computes the
//!   view with polars in micro-batches and writes `features.<view>`, the offline Parquet
//!   store and the online store; labels from `labels` are kept for training sets.
//! - The HTTP API declares views, serves online lookups and builds point-in-time-correct
//!   training sets as immutable snapshots.

pub mod api;
pub mod catalog;
pub mod decode;
pub mod intake;
pub mod labels;
pub mod online;
pub mod pipeline;
pub mod spec;
pub mod store;
pub mod stream;
pub mod training;
pub mod views;

use std::{sync::Arc, time::Duration};

use catalog::Catalog;
use mlops_kafka::{ConsumerLoop, ConsumerMetrics, Producer, TopicSpec, ensure_topics};
use mlops_runtime::{AdminState, Supervisor, TaskSet};
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use spec::FeatureViewSpec;
use store::FeatureStore;
use stream::StreamSettings;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "feature";
pub const DEFAULT_PORT: u16 = mlops_service::ports::FEATURE;
/// Default consumer group of the raw intake.
pub const RAW_INTAKE_GROUP: &str = "feature.raw-intake";
/// Every raw topic, not their dead-letter topics (dataset names contain no dot).
pub const RAW_TOPICS: &str = mlops_events::topics::RAW_TOPIC_PATTERN;

/// Settings of the feature service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Consumer group of the raw intake; instances sharing it share the raw partitions.
    pub intake_group: String,
    /// Topics the intake reads: a name, or a pattern starting with `^`.
    pub raw_topics: String,
    /// Where the offline store, snapshots and checkpoints live: a directory, `file://...`
    /// or `s3://bucket/prefix`. Empty: `<data_dir>/feature-store`.
    pub store_url: String,
    /// Directory of `*.toml` feature view specs declared at start (empty: none).
    pub views_dir: String,
    /// A micro-batch closes at this many records...
    pub batch_max_records: usize,
    /// ...or this long after its first record.
    pub batch_max_wait_ms: u64,
    /// Partitions of new `features.<view>` and of the labels topic.
    pub feature_partitions: i32,
    /// Consumer group that stores ground-truth labels.
    pub labels_group: String,
    /// A stream job compacts its output every this many batches...
    pub compact_every_batches: u64,
    /// ...in each date partition holding at least this many batch files.
    pub compact_min_files: usize,
    /// The longest window plus allowed lateness a view may declare (a duration): a view
    /// job keeps that much history per entity in memory, so this bounds its memory by
    /// configuration rather than by what a user declares.
    pub max_window: String,
    /// The most entity ids one `entities:lookup` may ask for.
    pub max_lookup_ids: usize,
    /// How long a training-set request waits for the view and the labels to have
    /// processed everything their topics held when it arrived (a duration); past that it
    /// is refused with 503 rather than built from a stale view.
    pub training_set_catch_up: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            intake_group: RAW_INTAKE_GROUP.to_owned(),
            raw_topics: RAW_TOPICS.to_owned(),
            store_url: String::new(),
            views_dir: String::new(),
            batch_max_records: 10_000,
            batch_max_wait_ms: 200,
            feature_partitions: 3,
            labels_group: labels::LABELS_GROUP.to_owned(),
            compact_every_batches: 50,
            compact_min_files: 16,
            max_window: "90d".to_owned(),
            max_lookup_ids: 10_000,
            training_set_catch_up: "30s".to_owned(),
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
    let store_url = if settings.store_url.is_empty() {
        config.data_dir.join("feature-store").display().to_string()
    } else {
        settings.store_url.clone()
    };
    let store = FeatureStore::open(&store_url)?.with_sealer(config.sealer()?);
    let codec = Arc::new(config.codec());
    let producer = Producer::new(&config.kafka, codec.clone())?;
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ConsumerMetrics::register(&mut registry);
    let stream_metrics = stream::StreamMetrics::register(&mut registry);
    let supervisor = Supervisor::register(&mut registry, stream::METRICS_PREFIX);
    let admin = AdminState::new(SERVICE, registry, config.readiness_checks());

    let mut tasks = TaskSet::new(cancel.child_token());
    let app = Arc::new(api::App {
        limits: api::Limits {
            max_window_ms: mlops_service::parse_duration(&settings.max_window)
                .map_err(|e| anyhow::anyhow!("feature.max_window: {e}"))?,
            max_lookup_ids: settings.max_lookup_ids,
            training_set_catch_up: std::time::Duration::from_millis(
                mlops_service::parse_duration(&settings.training_set_catch_up)
                    .map_err(|e| anyhow::anyhow!("feature.training_set_catch_up: {e}"))?
                    as u64,
            ),
        },
        region: config.region.clone(),
        catalog: Catalog::new(store.clone()),
        store: store.clone(),
        online: Arc::default(),
        codec: codec.clone(),
        producer: producer.clone(),
        kafka: config.kafka.clone(),
        schema_registry: codec.registry().clone(),
        stream: StreamSettings {
            max_records: settings.batch_max_records,
            max_wait: Duration::from_millis(settings.batch_max_wait_ms),
            metrics: stream_metrics,
            consumer_metrics: metrics.clone(),
            compaction: stream::Compaction {
                every_batches: settings.compact_every_batches,
                min_files: settings.compact_min_files,
            },
        },
        feature_partitions: settings.feature_partitions,
        jobs: Default::default(),
        supervisor: supervisor.clone(),
        cancel: tasks.token(),
    });
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &config.kafka, producer.clone());
    tasks.spawn("audit", audit_writer.run(tasks.token()));
    let router = config
        .protect(
            SERVICE,
            api::router(app.clone()),
            &[api::ROUTES],
            Some(auditor),
            &admin,
        )
        .await?;

    let intake = ConsumerLoop::new(
        &config.kafka,
        &settings.intake_group,
        vec![settings.raw_topics.clone()],
        producer.clone(),
    )
    .with_metrics(metrics);
    let handler = intake::RawIntake::new(codec.clone(), config.region.clone());
    tasks.spawn("raw-intake", intake.run(handler, tasks.token()));

    // Beside serving, not before it: a broker down at the start costs the labels job its
    // wait (it reads the topic once it exists), not the API its port.
    let (kafka, partitions, token) = (
        config.kafka.clone(),
        settings.feature_partitions,
        tasks.token(),
    );
    tasks.spawn("provision-labels", async move {
        let labels = [TopicSpec::new(mlops_events::topics::LABELS, partitions)];
        let provision = async {
            let mut backoff = Duration::from_secs(1);
            while let Err(e) = ensure_topics(&kafka, &labels).await {
                tracing::warn!(error = %e, "labels topic not created yet; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        };
        // A stop does not wait for an unreachable broker's timeout.
        tokio::select! {
            () = token.cancelled() => {}
            () = provision => {}
        }
        // A task of the set that ends stops the service.
        token.cancelled().await;
        Ok::<(), anyhow::Error>(())
    });
    let labels_wiring = stream::Wiring {
        store,
        kafka: config.kafka.clone(),
        group: settings.labels_group.clone(),
        topics: vec![mlops_events::topics::LABELS.to_owned()],
        dead_letters: producer,
        settings: app.stream.clone(),
    };
    let (labels_cancel, region) = (tasks.token(), config.region.clone());
    supervisor.spawn("labels", tasks.token(), move |reporter| {
        stream::run(
            labels::LabelJob::new(codec.clone(), region.clone()),
            labels_wiring.clone(),
            labels_cancel.clone(),
            reporter,
        )
    });
    for version in app.catalog.all_latest().await? {
        app.start(version).await;
    }
    let specs = load_spec_files(&settings.views_dir)?;
    tasks.spawn("declare-files", declare_files(app, specs, tasks.token()));
    let (common, token) = (config.clone(), tasks.token());
    tasks.spawn("http", async move {
        common.serve(listener, router, token).await
    });
    // Longer than a consumer's bounded leave of its group (`mlops_kafka::CLOSE_TIMEOUT`),
    // which a busy broker can use up.
    let stopped = tasks
        .run(
            cancel.cancelled_owned(),
            mlops_kafka::CLOSE_TIMEOUT + Duration::from_secs(5),
        )
        .await;
    // The task set's end cancelled every job; each makes its last commit before it ends.
    if !supervisor.drain(Duration::from_secs(15)).await {
        tracing::warn!(
            "stream jobs did not stop within 15 s; uncommitted records will be redelivered"
        );
    }
    stopped.map_err(anyhow::Error::from)
}

/// Every `*.toml` spec of `dir`, checked: a bad file stops the start with its problems.
fn load_spec_files(dir: &str) -> anyhow::Result<Vec<(String, FeatureViewSpec)>> {
    if dir.is_empty() {
        return Ok(Vec::new());
    }
    let mut paths: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| anyhow::anyhow!("feature.views_dir {dir}: {e}"))?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    paths.sort();
    let mut specs = Vec::new();
    for path in paths {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("{shown}: {e}"))?;
        let spec = FeatureViewSpec::from_toml(&text)
            .and_then(|spec| spec.check().map(|()| spec))
            .map_err(|errors| {
                let problems: Vec<String> = errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.reason))
                    .collect();
                anyhow::anyhow!("{shown}: {}", problems.join("; "))
            })?;
        specs.push((shown, spec));
    }
    Ok(specs)
}

/// Declares the spec files, retrying those whose source dataset or registry is not there yet.
async fn declare_files(
    app: Arc<api::App>,
    mut pending: Vec<(String, FeatureViewSpec)>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    while !pending.is_empty() {
        let mut waiting = Vec::new();
        for (path, spec) in pending {
            match app.declare(spec.clone()).await {
                Ok((version, _)) => {
                    tracing::info!(%path, view = %version.name, version = version.version, "feature view declared");
                }
                Err(
                    views::DeclareError::UnknownSource(_) | views::DeclareError::Unavailable(_),
                ) => {
                    waiting.push((path, spec));
                }
                Err(e) => tracing::error!(%path, error = ?e, "feature view refused"),
            }
        }
        pending = waiting;
        if !pending.is_empty() {
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }
    cancel.cancelled().await;
    Ok(())
}
