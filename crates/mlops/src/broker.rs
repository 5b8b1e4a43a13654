//! `mlops broker`: the embedded broker as a process of its own. Its storage is a SQLite
//! file in the working directory (the launcher starts it inside `<data dir>/broker`), so
//! topics, records and committed offsets survive a restart.

use std::{net::SocketAddr, process::ExitCode};

use mlops_broker::{BrokerStorage, EmbeddedBroker};

/// Tansu opens a span at `info` for every layer of every request and for every SQL
/// statement it runs: recording them took about a third of the broker's CPU per event
/// (0.30 vs 0.19 ms, `load-tests/embedded.sh`). `RUST_LOG=tansu_storage=debug` (for
/// example) brings them back.
const QUIET: &[&str] = &[
    "tansu_broker=warn",
    "tansu_storage=warn",
    "tansu_sans_io=warn",
    "tansu_service=warn",
    "tansu_schema=warn",
    "tansu_auth=warn",
    "tansu_model=warn",
];

pub(crate) fn main() -> ExitCode {
    let port: u16 = match std::env::var("MLOPS_BROKER_PORT").map(|p| p.parse()) {
        Err(_) => mlops_service::ports::BROKER,
        Ok(Ok(port)) => port,
        Ok(Err(_)) => {
            eprintln!("broker: MLOPS_BROKER_PORT is not a port number");
            return ExitCode::from(2);
        }
    };
    let storage = match std::env::var("MLOPS_BROKER_STORAGE").as_deref() {
        Ok("memory") => BrokerStorage::Memory,
        Ok("sqlite") | Err(_) => BrokerStorage::SqliteInWorkingDir("tansu.db".to_owned()),
        Ok(other) => {
            eprintln!("broker: MLOPS_BROKER_STORAGE must be sqlite or memory, not {other:?}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let telemetry = mlops_telemetry::init_with_defaults("broker", QUIET).ok();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let code = match EmbeddedBroker::start(addr, storage.clone()).await {
            Err(e) => {
                tracing::error!(error = %e, "broker did not start");
                ExitCode::FAILURE
            }
            Ok(mut broker) => {
                tracing::info!(%addr, ?storage, "broker listening");
                tokio::select! {
                    () = mlops_runtime::shutdown_signal() => ExitCode::SUCCESS,
                    () = parent_gone() => ExitCode::SUCCESS,
                    () = broker.stopped() => ExitCode::FAILURE,
                }
            }
        };
        if let Some(telemetry) = telemetry {
            telemetry.shutdown();
        }
        code
    });
    // A blocked stdin read (the parent watch) must not hold the exit.
    runtime.shutdown_background();
    code
}

/// With `MLOPS_EXIT_WITH_PARENT`, stdin is a pipe from the launcher: EOF means it is gone.
async fn parent_gone() {
    use tokio::io::AsyncReadExt;
    if std::env::var_os("MLOPS_EXIT_WITH_PARENT").is_none() {
        return std::future::pending().await;
    }
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {}
}
