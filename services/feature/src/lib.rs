//! The feature service: computes feature views from raw topics into the offline and online stores.
//!
//! Its business logic arrives with its own issue; until then it answers only the admin
//! endpoints (`/healthz`, `/readyz`, `/metrics`) and claims nothing else.

use mlops_service::CommonConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = "feature";
pub const DEFAULT_PORT: u16 = mlops_service::ports::FEATURE;

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
