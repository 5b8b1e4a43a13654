//! The monitoring service: watches predictions for drift and judges canaries.
//!
//! Its business logic arrives with its own issue; until then it answers only the admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`) and claims nothing else.

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
