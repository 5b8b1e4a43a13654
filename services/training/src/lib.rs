//! The training service: trains, tunes and validates models when asked by events.
//!
//! What is here so far: model specs and manual runs over HTTP (`api`: a run fetches the
//! spec's snapshot from the feature service and keeps its record and signed artifact), a
//! run from snapshot to signed artifact (`run`), model specs (`spec`), snapshots as
//! training rows (`snapshot`), the metrics (`metrics`) and the fitting, scoring and search
//! of candidate models (`trainer`), checked against scikit-learn. Not wired yet: runs
//! triggered by `training.requests`, durable run records, registration.

pub mod metrics;
pub mod run;
pub mod snapshot;
pub mod spec;
pub mod trainer;

use std::sync::Arc;

use mlops_service::{CommonConfig, ServiceConfig};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub mod api;

pub const SERVICE: &str = "training";
pub const DEFAULT_PORT: u16 = mlops_service::ports::TRAINING;

/// Settings of the training service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Base URL of the feature service, where training snapshots come from.
    pub feature_url: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            feature_url: format!("http://127.0.0.1:{}", mlops_service::ports::FEATURE),
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

/// Serves until `cancel` fires.
pub async fn run(
    config: Config,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let data = config.common.data_dir.clone();
    let signer = Arc::new(mlops_ml::Signer::from_secret_file(
        &data.join("signing.key"),
    )?);
    let app = Arc::new(api::App {
        specs: Default::default(),
        runs: Default::default(),
        feature_url: config.training.feature_url.trim_end_matches('/').to_owned(),
        artifacts: data.join("artifacts"),
        signer,
        http: reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(300))
            .build()?,
    });
    let admin = mlops_runtime::AdminState::new(
        SERVICE,
        Default::default(),
        config.common.readiness_checks(),
    );
    let router = admin.with_http_telemetry(api::router(app).merge(admin.router()));
    mlops_runtime::serve(listener, router, cancel).await?;
    Ok(())
}
