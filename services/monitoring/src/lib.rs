//! The monitoring service: watches predictions for drift and judges canaries.
//!
//! So far: the drift detector (`detector`: windows, statistics, hysteresis), pure and
//! tested; the service around it (consuming predictions, publishing `monitoring.drift` and
//! training requests, reports, canary analysis) is not wired yet, so the service answers
//! only its admin endpoints.

pub mod detector;

use mlops_service::CommonConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "monitoring";
pub const DEFAULT_PORT: u16 = mlops_service::ports::MONITORING;

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
