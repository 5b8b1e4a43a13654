//! `mlops broker`: the local broker as a process of its own, in the working directory (the
//! launcher starts it inside `<data dir>/broker`), so topics, records and committed
//! offsets survive a restart. The engine is Apache Kafka (a JVM child of this process,
//! data under `kafka/`) or Tansu in-process (a SQLite file, `tansu.db`); see `kafka.rs`.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use mlops_broker::{BrokerStorage, EmbeddedBroker};
use nix::{sys::signal::Signal, unistd::Pid};

use crate::kafka::{self, Engine};

/// How long Kafka gets for its controlled shutdown before it is killed.
const KAFKA_STOP_GRACE: Duration = Duration::from_secs(30);

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

fn env_port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Err(_) => Ok(default),
        Ok(text) => text
            .parse()
            .map_err(|_| format!("broker: {var} is not a port number: {text:?}")),
    }
}

pub(crate) fn main() -> ExitCode {
    let port = match env_port("MLOPS_BROKER_PORT", mlops_service::ports::BROKER) {
        Ok(port) => port,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let choice = match kafka::choose(&PathBuf::from(".")) {
        Ok(choice) => choice,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::from(2);
        }
    };
    match choice.engine {
        Engine::Tansu => tansu(port),
        Engine::Kafka => match env_port("MLOPS_BROKER_CONTROLLER_PORT", port.wrapping_add(1)) {
            Ok(controller_port) => apache_kafka(port, controller_port),
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
    }
}

/// Apache Kafka as a child JVM: formatted on first use, stopped gracefully with this
/// process, and never outliving it.
fn apache_kafka(port: u16, controller_port: u16) -> ExitCode {
    let node = match kafka::provision() {
        Ok(libs) => kafka::Node {
            dir: PathBuf::from("kafka"),
            libs,
        },
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let node = match std::path::absolute(&node.dir) {
        Ok(dir) => kafka::Node { dir, ..node },
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    node.stop_leftover();
    if let Err(e) = node.prepare(port, controller_port) {
        eprintln!("broker: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("broker: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        // setpriv (util-linux) makes the kernel stop the JVM should this process be killed
        // outright; it runs on the thread that spawns it, this one, which lives to the end.
        let mut command = if kafka::on_path("setpriv") {
            let mut command = tokio::process::Command::new("setpriv");
            command.args(["--pdeathsig", "TERM", "java"]);
            command
        } else {
            tokio::process::Command::new("java")
        };
        command.args(node.server_args()).kill_on_drop(true);
        let mut child = match command.spawn() {
            Ok(child) => child,
            Err(e) => {
                eprintln!("broker: starting java: {e}");
                return ExitCode::FAILURE;
            }
        };
        let pid = child.id().unwrap_or_default();
        if let Err(e) = std::fs::write(node.pid_file(), pid.to_string()) {
            eprintln!("broker: {}: {e}", node.pid_file().display());
        }
        eprintln!(
            "broker: Apache Kafka {} (pid {pid}) on 127.0.0.1:{port}, controller 127.0.0.1:{controller_port}",
            kafka::version(),
        );
        tokio::select! {
            status = child.wait() => {
                eprintln!("broker: Apache Kafka exited ({})", status.map_or_else(|e| e.to_string(), |s| s.to_string()));
                return ExitCode::FAILURE;
            }
            () = mlops_runtime::shutdown_signal() => {}
            () = parent_gone() => {}
        }
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
        }
        match tokio::time::timeout(KAFKA_STOP_GRACE, child.wait()).await {
            Ok(_) => ExitCode::SUCCESS,
            Err(_) => {
                eprintln!("broker: Apache Kafka did not stop within {}s, killing it", KAFKA_STOP_GRACE.as_secs());
                let _ = child.kill().await;
                ExitCode::FAILURE
            }
        }
    });
    runtime.shutdown_background();
    code
}

/// Tansu in this process, on a SQLite file (or in memory with `MLOPS_BROKER_STORAGE=memory`).
fn tansu(port: u16) -> ExitCode {
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
        // The broker's spans are its storage internals: exported only when asked for.
        let telemetry = if std::env::var("MLOPS_BROKER_TRACES").is_ok_and(|v| v == "1") {
            mlops_telemetry::init_with_defaults("broker", QUIET)
        } else {
            mlops_telemetry::init_without_export("broker", QUIET)
        }
        .ok();
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
