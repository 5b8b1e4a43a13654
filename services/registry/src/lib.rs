//! The registry service. Today it is the platform's Confluent-compatible Schema Registry
//! (SQLite by default, PostgreSQL by URL, same code); the model registry joins it on the
//! same port with its own issue.

pub mod compatibility;
pub mod schema_registry;
pub mod store;

use std::sync::Arc;

use mlops_runtime::{AdminState, ReadinessCheck};
use mlops_service::CommonConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use store::Store;

pub const SERVICE: &str = "registry";
pub const DEFAULT_PORT: u16 = mlops_service::ports::REGISTRY;

/// The service's configuration with its default port.
pub fn default_config() -> CommonConfig {
    CommonConfig::with_port(DEFAULT_PORT)
}

/// The registry's HTTP API (Schema Registry and admin endpoints) over `store`.
pub fn router(store: Arc<Store>, admin: &AdminState) -> axum::Router {
    admin.with_http_telemetry(schema_registry::router(store).merge(admin.router()))
}

/// Serves until `cancel` fires.
pub async fn run(
    config: CommonConfig,
    listener: TcpListener,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let url = config.database_url(SERVICE);
    let store = Arc::new(Store::connect(&url).await?);
    let database = store.clone();
    let checks = vec![
        ReadinessCheck::new("database", move || {
            let database = database.clone();
            async move { database.ping().await.map_err(|e| e.to_string()) }
        }),
        mlops_service::broker_check(&config.kafka),
    ];
    let admin = AdminState::new(SERVICE, Default::default(), checks);
    mlops_runtime::serve(listener, router(store, &admin), cancel).await?;
    Ok(())
}
