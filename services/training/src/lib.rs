//! The training service: trains, tunes and validates models when asked by events.
//!
//! What is here so far: a run from snapshot to signed artifact (`run`), model specs (`spec`), snapshots as training rows (`snapshot`), the
//! metrics (`metrics`) and the fitting, scoring and grid search of
//! candidate models (`trainer`), checked against scikit-learn. The service itself (runs
//! triggered by `training.requests`, specs, the validation gate) is not wired yet: it
//! answers only the admin endpoints (`/healthz`, `/readyz`, `/metrics`).

pub mod metrics;
pub mod run;
pub mod snapshot;
pub mod spec;
pub mod trainer;

use mlops_service::CommonConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "training";
pub const DEFAULT_PORT: u16 = mlops_service::ports::TRAINING;

/// The service's configuration with its default port.
pub fn default_config() -> CommonConfig {
    CommonConfig::with_port(DEFAULT_PORT)
}

/// Serves until `cancel` fires.
pub async fn run(
    config: CommonConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    mlops_service::serve_admin_only(SERVICE, &config, listener, cancel).await
}
