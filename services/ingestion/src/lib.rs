//! The ingestion service: the producers' front door. Datasets are declared with an Avro
//! schema, keys, rules and a region; events arrive as JSON (object, array or NDJSON), are
//! validated field by field, converted to Confluent-framed Avro and produced to
//! `raw.<dataset>` with `acks=all` before the producer gets its answer.

pub mod api;
pub mod dataset;
pub mod store;

use std::sync::Arc;

use mlops_events::topics;
use mlops_kafka::{Producer, TopicSpec, ensure_topics};
use mlops_runtime::{AdminState, ReadinessCheck};
use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "ingestion";
pub const DEFAULT_PORT: u16 = mlops_service::ports::INGESTION;

/// Settings of the ingestion API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Residency region of this instance; datasets of another region are refused. Unset:
    /// the service's `region` (`MLOPS_REGION`).
    pub region: Option<String>,
    /// Largest request body accepted (413 above).
    pub max_body_bytes: usize,
    /// Request bodies being read or processed at once, in bytes, at most (by their
    /// declared length); beyond, 429 with Retry-After.
    pub max_body_bytes_in_flight: usize,
    /// How long an accepted event id is remembered for idempotent retries.
    pub idempotency_window_secs: u64,
    /// Events waiting for broker acknowledgement, at most; beyond, 429 with Retry-After.
    pub max_in_flight: usize,
    /// Refuse a whole batch when one record is invalid (per request: `?atomic=true`).
    pub all_or_nothing: bool,
    /// Threads of their own, each with a single-threaded runtime, serving the API's
    /// connections, plain HTTP or TLS (`mlops_runtime::lanes`); 0: the service's shared
    /// runtime.
    /// Unset: one per core.
    pub http_lanes: Option<usize>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            region: None,
            max_body_bytes: 16 * 1024 * 1024,
            max_body_bytes_in_flight: 64 * 1024 * 1024,
            idempotency_window_secs: 24 * 3600,
            max_in_flight: 100_000,
            all_or_nothing: false,
            http_lanes: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    #[serde(flatten)]
    pub common: CommonConfig,
    pub ingestion: Settings,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            common: CommonConfig::with_port(DEFAULT_PORT),
            ingestion: Settings::default(),
        }
    }
}

impl ServiceConfig for Config {
    fn common(&self) -> &CommonConfig {
        &self.common
    }

    fn validate(&self) -> Vec<String> {
        let mut errors = self.common.validate();
        if self.ingestion.max_in_flight == 0 || self.ingestion.max_in_flight > u32::MAX as usize {
            errors.push("ingestion.max_in_flight: must be between 1 and 4294967295".to_owned());
        }
        if self.ingestion.max_body_bytes == 0 {
            errors.push("ingestion.max_body_bytes: must be positive".to_owned());
        }
        if self.ingestion.max_body_bytes_in_flight < self.ingestion.max_body_bytes
            || self.ingestion.max_body_bytes_in_flight / 1024 > u32::MAX as usize
        {
            errors.push(
                "ingestion.max_body_bytes_in_flight: must be at least max_body_bytes (and under 4 TiB)"
                    .to_owned(),
            );
        }
        errors
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
    let common = &config.common;
    let lanes = config
        .ingestion
        .http_lanes
        .unwrap_or_else(mlops_runtime::cpu::cores);
    let Some(pool) =
        mlops_service::starting::database(common, SERVICE, &listener, store::MIGRATIONS, &cancel)
            .await?
    else {
        return Ok(());
    };
    let store = store::Store::new(pool);
    let codec = Arc::new(common.codec());
    let schema_registry = codec.registry().clone();
    let producer = Producer::new(&common.kafka, codec)?;
    let (auditor, audit_writer) =
        mlops_service::audit::Auditor::new(SERVICE, &common.kafka, producer.clone());
    let mut registry = prometheus_client::registry::Registry::default();
    let app = Arc::new(api::App::new(
        {
            let mut settings = config.ingestion.clone();
            settings.region = settings.region.or_else(|| common.region.clone());
            settings
        },
        store.clone(),
        producer,
        common.kafka.clone(),
        schema_registry,
        &mut registry,
    ));
    app.load().await?;
    let window_ms = (config.ingestion.idempotency_window_secs as i64) * 1000;
    let recovery = recover_accepted_ids(app.clone(), window_ms, cancel.clone());

    // The audit trail is shared by every service (each on its own partition).
    // Labels are shared with the feature service, which creates the topic the same way.
    let audit = [
        mlops_service::audit::audit_topic(),
        TopicSpec::new(topics::LABELS, 3),
    ];
    let kafka = common.kafka.clone();
    let stopping = cancel.clone();
    let provisioning = async move {
        tokio::select! {
            // A stop does not wait for an unreachable broker's timeout.
            () = stopping.cancelled() => {}
            made = ensure_topics(&kafka, &audit) => if let Err(e) = made {
                tracing::warn!(error = %e, "audit or labels topic not created yet; writes to it fail until it exists");
            }
        }
    };

    let pruning = prune_accepted_ids(store.clone(), window_ms, cancel.clone());

    let mut checks = common.readiness_checks();
    checks.push(ReadinessCheck::new("database", move || {
        let store = store.clone();
        async move { store.ping().await.map_err(|e| e.to_string()) }
    }));
    let recovering = app.clone();
    checks.push(ReadinessCheck::new("recovery", move || {
        let reason = recovering.recovery.reason();
        async move { reason.map_or(Ok(()), Err) }
    }));
    let admin = AdminState::new(SERVICE, registry, checks);
    let router = common
        .protect(
            SERVICE,
            api::router(app),
            &[api::ROUTES],
            Some(auditor),
            &admin,
        )
        .await?;
    let (served, (), (), (), _) = tokio::join!(
        // Its handlers only answer, and single events are its hot path: each connection
        // stays on one thread (`mlops_runtime::lanes`).
        common.serve_on_lanes(listener, router, cancel.clone(), lanes),
        recovery,
        pruning,
        provisioning,
        audit_writer.run(cancel)
    );
    served?;
    Ok(())
}

/// Beside serving, before events with ids are taken: remembers what the last run produced
/// but died before remembering (see `api::recovery`). The broker may be starting (the
/// embedded one starts beside this service) or down: this retries, with backoff, until
/// it succeeds — while the broker does not answer nothing could be produced anyway, so
/// waiting costs no event, and giving up could let a retry be written twice. Each
/// failure is the reason the 503s and `/readyz` give.
async fn recover_accepted_ids(app: Arc<api::App>, window_ms: i64, cancel: CancellationToken) {
    let mut backoff = std::time::Duration::from_secs(1);
    loop {
        match app.recover_accepted(window_ms).await {
            Ok(recovered) => {
                if recovered > 0 {
                    tracing::warn!(
                        recovered,
                        "accepted event ids recovered from the raw topics"
                    );
                }
                app.recovery.done();
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "reading back the raw topics' tails; events with ids are answered 503 until then");
                app.recovery.failed(format!("{e:#}"));
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(std::time::Duration::from_secs(10));
    }
}

/// Forgets accepted event ids older than the idempotency window, at start and every ten
/// minutes, so the table holds one window of ids rather than all history.
async fn prune_accepted_ids(store: store::Store, window_ms: i64, cancel: CancellationToken) {
    loop {
        match store.prune(mlops_events::now_millis() - window_ms).await {
            Ok(0) => {}
            Ok(forgotten) => tracing::info!(
                forgotten,
                "accepted event ids past the idempotency window forgotten"
            ),
            Err(e) => {
                tracing::warn!(error = %e, "pruning accepted event ids failed; retrying later")
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(std::time::Duration::from_secs(600)) => {}
        }
    }
}
