//! `mlops up` and `mlops demo`: start the embedded broker and the six services as separate
//! OS processes (each is this same binary in `broker` or `service` mode), restart any that
//! dies, and stop them all on Ctrl-C — services first, the broker last, no orphan left.

use std::{
    path::{Path, PathBuf},
    process::{ExitCode, Stdio},
    time::{Duration, Instant},
};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::{process::Command, task::JoinHandle};
use tokio_util::sync::CancellationToken;

use crate::{
    kafka::{self, Engine},
    platform::{Layout, SERVICES},
    status,
};

/// How long a child gets to drain after SIGTERM before it is killed: longer than a
/// service's own drain (its tasks, then its stream jobs' last commits).
const STOP_GRACE: Duration = Duration::from_secs(40);
/// Settings of the embedded platform where the services' defaults are sized for production
/// traffic: on one machine traffic is small, so windows and canary bakes are too, and a
/// retraining waits only a second for other requests to join it. Each applies unless set
/// otherwise.
const EMBEDDED_DEFAULTS: [(&str, &str); 8] = [
    ("MLOPS__TRAINING__COOLDOWN_MS", "1000"),
    ("MLOPS__MONITORING__POLICY__WINDOW_SIZE", "200"),
    ("MLOPS__MONITORING__POLICY__MIN_WINDOW_SIZE", "30"),
    ("MLOPS__MONITORING__POLICY__RETRAIN_RETRY_WINDOWS", "3"),
    ("MLOPS__MONITORING__POLICY__RETRAIN_RETRY_MS", "10000"),
    ("MLOPS__MONITORING__POLICY__CANARY__MIN_REQUESTS", "50"),
    ("MLOPS__MONITORING__POLICY__CANARY__MIN_LABELS", "30"),
    ("MLOPS__MONITORING__POLICY__CANARY__MIN_SECONDS", "5"),
];

/// How long everything may take to become ready before `up` reports a failure.
const READY_TIMEOUT: Duration = Duration::from_secs(180);
const BACKOFF_MAX: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy)]
pub(crate) enum Mode {
    Up,
    Demo { exit: bool, timeout: Duration },
}

/// Runs the platform; with `tls`, every service's API over HTTPS with the certificates of
/// `<data dir>/tls` (created on first use).
pub(crate) fn main(mode: Mode, tls: bool, jaeger: bool) -> ExitCode {
    let mut layout = match Layout::from_env() {
        Ok(layout) => layout,
        Err(errors) => {
            eprintln!("mlops: {}", errors.join("; "));
            return ExitCode::from(2);
        }
    };
    layout.tls = tls;
    layout.jaeger = jaeger;
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(run(mode, layout))
}

/// What `up` says when the binary was not built fully optimised (the `demo` profile, a
/// debug build): fine for the demo and for looking around, not for measuring anything.
fn build_notice(opt_level: &str) -> Option<String> {
    (opt_level != "3").then(|| {
        format!(
            "this build is not fully optimised (opt-level {opt_level}): right for the demo and for \
             exploring; for load, benchmarks or production use `cargo build --release`"
        )
    })
}

/// A supervised child process and the token that stops it.
struct Supervised {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl Supervised {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

async fn run(mode: Mode, mut layout: Layout) -> ExitCode {
    if let Err(e) = std::fs::create_dir_all(&layout.data_dir)
        .and_then(|()| layout.data_dir.canonicalize())
        .map(|dir| layout.data_dir = dir)
    {
        eprintln!("mlops: data directory {}: {e}", layout.data_dir.display());
        return ExitCode::FAILURE;
    }
    let engine = match &layout.external_bootstrap {
        Some(_) => None,
        None => match local_engine(&layout.data_dir.join("broker")) {
            Ok(engine) => Some(engine),
            Err(e) => {
                eprintln!("mlops: {e}");
                return ExitCode::FAILURE;
            }
        },
    };
    let busy = busy_ports(&layout, engine);
    if !busy.is_empty() {
        eprintln!(
            "mlops: ports unavailable: {} (another platform running? override with MLOPS_<NAME>_PORT)",
            busy.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            eprintln!("mlops: cannot locate own executable: {e}");
            return ExitCode::FAILURE;
        }
    };
    let logs = layout.data_dir.join("logs");
    println!("mlops: data directory {}", layout.data_dir.display());
    println!("mlops: logs in {}", logs.display());
    if let Some(notice) = build_notice(env!("MLOPS_OPT_LEVEL")) {
        println!("mlops: {notice}");
    }

    let broker = match (&layout.external_bootstrap, engine) {
        (Some(bootstrap), _) => {
            println!("mlops: using external Kafka at {bootstrap}; no local broker");
            None
        }
        (None, engine) => {
            let engine = engine.unwrap_or(Engine::Tansu);
            let dir = layout.data_dir.join("broker");
            let mut command = Command::new(&exe);
            command
                .arg("broker")
                .current_dir(&dir)
                .env("MLOPS_BROKER", engine.name())
                .env("MLOPS_BROKER_PORT", layout.broker_port.to_string())
                .env(
                    "MLOPS_BROKER_CONTROLLER_PORT",
                    layout.controller_port.to_string(),
                );
            let supervised = supervise("broker", command, Some(dir.clone()), &logs);
            let what = match engine {
                Engine::Kafka => format!("Apache Kafka {}", kafka::version()),
                Engine::Tansu => "embedded Tansu".to_owned(),
            };
            println!(
                "mlops: broker      kafka://{}  ({what}, durable in {})",
                layout.bootstrap_servers(),
                dir.display()
            );
            Some(supervised)
        }
    };

    let jaeger = if layout.jaeger {
        // Built (once) before anything starts, in the foreground: a failure is the answer.
        if let Err(e) = crate::jaeger::binary() {
            eprintln!("mlops: {e}");
            return ExitCode::FAILURE;
        }
        let ports = match crate::jaeger::Ports::from_env() {
            Ok(ports) => ports,
            Err(e) => {
                eprintln!("mlops: {e}");
                return ExitCode::from(2);
            }
        };
        let mut command = Command::new(&exe);
        command.args([
            "jaeger",
            "--config-dir",
            &layout.data_dir.join("jaeger").display().to_string(),
            "--otlp-grpc-port",
            &ports.otlp_grpc.to_string(),
            "--otlp-http-port",
            &ports.otlp_http.to_string(),
            "--ui-port",
            &ports.ui.to_string(),
        ]);
        let supervised = supervise("jaeger", command, None, &logs);
        println!(
            "mlops: jaeger      http://localhost:{}  (Jaeger {}: the services' traces; OTLP in on {})",
            ports.ui,
            crate::jaeger::version(),
            ports.otlp_http
        );
        Some((supervised, ports))
    } else {
        None
    };

    let certs = crate::certs::Certs::of(&layout.data_dir);
    let marker = layout.data_dir.join("tls").join("active");
    if layout.tls {
        match certs.ensure() {
            Ok(_) => println!(
                "mlops: TLS on every API; trust {} (curl --cacert)",
                certs.ca().display()
            ),
            Err(e) => {
                eprintln!("mlops: cannot create the development certificates: {e}");
                return ExitCode::FAILURE;
            }
        }
        // `mlops status` and friends then speak HTTPS to this platform.
        if let Err(e) = std::fs::write(&marker, b"") {
            eprintln!("mlops: {}: {e}", marker.display());
            return ExitCode::FAILURE;
        }
    } else {
        let _ = std::fs::remove_file(&marker);
    }
    let credentials = crate::credentials::Credentials::of(&layout.data_dir);
    match credentials.ensure() {
        Ok(issued) => {
            let word = if issued { "created" } else { "kept" };
            println!(
                "mlops: API tokens {word}: admin in {}, producer in {} (send as `Authorization: Bearer <token>`)",
                credentials.admin_token.display(),
                credentials.producer_token.display()
            );
        }
        Err(e) => {
            eprintln!("mlops: cannot create the platform's API tokens: {e}");
            return ExitCode::FAILURE;
        }
    }

    let mut services = Vec::new();
    for service in SERVICES {
        let mut command = Command::new(&exe);
        command
            .args(["service", service])
            .env("KAFKA_BOOTSTRAP_SERVERS", layout.bootstrap_servers())
            .env("SCHEMA_REGISTRY_URL", layout.schema_registry())
            .env("MLOPS_DATA_DIR", layout.data_dir.join(service))
            .env("MLOPS_API_KEYS_FILE", &credentials.keys_file)
            .env("MLOPS_SERVICE_TOKEN_FILE", &credentials.service_token)
            .env(
                format!("MLOPS_{}_PORT", service.to_ascii_uppercase()),
                layout.port(service).to_string(),
            );
        // A setting for one service (`MLOPS__TRAINING__COOLDOWN_MS`) is an unknown setting
        // to the others, which would refuse to start: each gets only its own section's.
        for (name, _) in std::env::vars() {
            let section = name
                .strip_prefix("MLOPS__")
                .and_then(|rest| rest.split("__").next())
                .map(str::to_ascii_lowercase);
            if section.is_some_and(|s| s != service && SERVICES.contains(&s.as_str())) {
                command.env_remove(&name);
            }
        }
        let section = format!("MLOPS__{}__", service.to_ascii_uppercase());
        for (name, value) in EMBEDDED_DEFAULTS {
            if name.starts_with(&section) && std::env::var_os(name).is_none() {
                command.env(name, value);
            }
        }
        if service == "training" {
            // Training snapshots come from this platform's feature service, and models
            // that pass the gate go to its registry.
            command
                .env("MLOPS__TRAINING__FEATURE_URL", layout.url("feature"))
                .env("MLOPS__TRAINING__REGISTRY_URL", layout.url("registry"));
        }
        if service == "serving" {
            // Serving loads what the registry says is in production and canary.
            command
                .env("MLOPS__SERVING__REGISTRY_URL", layout.url("registry"))
                .env("MLOPS__SERVING__FEATURE_URL", layout.url("feature"));
        }
        if service == "monitoring" {
            // Each version's reference: its artifact in the registry, its snapshot in the
            // feature service.
            command
                .env("MLOPS__MONITORING__REGISTRY_URL", layout.url("registry"))
                .env("MLOPS__MONITORING__FEATURE_URL", layout.url("feature"));
        }
        if let Some((_, ports)) = &jaeger {
            command
                .env(
                    "OTEL_EXPORTER_OTLP_ENDPOINT",
                    format!("http://127.0.0.1:{}", ports.otlp_http),
                )
                .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        }
        if layout.tls {
            let files = certs.service(service);
            command
                .env("MLOPS_TLS_CERT_FILE", &files.cert)
                .env("MLOPS_TLS_KEY_FILE", &files.key)
                .env("MLOPS_TLS_CA_FILE", certs.ca());
        }
        services.push(supervise(service, command, None, &logs));
        println!("mlops: {service:<11} {}", layout.url(service));
    }
    if layout.schema_registry_url.is_none() {
        println!(
            "mlops: schema registry {} (Confluent-compatible API of the registry service)",
            layout.schema_registry()
        );
    }

    let outcome = match mode {
        Mode::Up => {
            match wait_until_ready(&layout, READY_TIMEOUT).await {
                Ok(elapsed) => println!(
                    "mlops: all services ready in {:.1}s; Ctrl-C stops everything",
                    elapsed.as_secs_f64()
                ),
                Err(e) => eprintln!("mlops: {e}; still supervising, see the logs"),
            }
            mlops_runtime::shutdown_signal().await;
            Ok(())
        }
        Mode::Demo { exit, timeout } => {
            let result = demo_story(&layout, Instant::now() + timeout).await;
            match &result {
                Ok(()) => println!("mlops demo: every step succeeded"),
                Err(e) => eprintln!("mlops demo: {e}"),
            }
            if !exit {
                println!(
                    "mlops demo: platform keeps running for exploration; Ctrl-C stops everything"
                );
                mlops_runtime::shutdown_signal().await;
            }
            result
        }
    };

    println!("mlops: stopping services");
    stop_all(services).await;
    if let Some(broker) = broker {
        println!("mlops: stopping broker");
        broker.stop().await;
    }
    if let Some((jaeger, _)) = jaeger {
        jaeger.stop().await;
    }
    println!("mlops: stopped");
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) => ExitCode::FAILURE,
    }
}

/// Stops children concurrently, each with its own grace period.
async fn stop_all(children: Vec<Supervised>) {
    for child in &children {
        child.stop.cancel();
    }
    for child in children {
        let _ = child.task.await;
    }
}

/// Steps of the demo: readiness, the story's 13, the final status.
const DEMO_STEPS: usize = 15;

/// The end-to-end story told by `mlops demo`, within `deadline`. Each step names itself
/// on failure.
async fn demo_story(layout: &Layout, deadline: Instant) -> Result<(), String> {
    println!("mlops demo: step 1/{DEMO_STEPS} — waiting for the broker and all six services");
    let limit = deadline.saturating_duration_since(Instant::now());
    let elapsed = wait_until_ready(layout, limit)
        .await
        .map_err(|e| format!("step 'platform ready' failed: {e}"))?;
    println!("mlops demo:   ready in {:.1}s", elapsed.as_secs_f64());
    crate::demo::story(layout, deadline, 2, DEMO_STEPS).await?;
    println!("mlops demo: step {DEMO_STEPS}/{DEMO_STEPS} — status");
    if !status::report(layout).await {
        return Err("step 'status' failed: a component stopped being ready".to_owned());
    }
    Ok(())
}

/// Polls every component's readiness until all are ready or `limit` passes.
async fn wait_until_ready(layout: &Layout, limit: Duration) -> Result<Duration, String> {
    let client = crate::status::http(layout);
    let started = Instant::now();
    let mut pending: Vec<&str> = SERVICES.to_vec();
    let mut last_reason = String::new();
    loop {
        let mut still = Vec::new();
        for service in pending {
            match status::readiness(&client, &layout.url(service)).await {
                Ok(_) => println!("mlops:   {service} ready"),
                Err(reason) => {
                    last_reason = format!("{service}: {reason}");
                    still.push(service);
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "not ready after {}s: {} (last: {last_reason})",
                limit.as_secs(),
                pending.join(", ")
            ));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Chooses the local broker's engine and, for Apache Kafka, fetches its jars once.
fn local_engine(broker_dir: &Path) -> Result<Engine, String> {
    let choice = kafka::choose(broker_dir)?;
    if choice.engine == Engine::Kafka && !kafka::provisioned(&kafka::libs_dir()) {
        println!(
            "mlops: fetching Apache Kafka {} from Maven Central into {} (once)",
            kafka::version(),
            kafka::libs_dir().display()
        );
    }
    let engine = match choice.engine {
        Engine::Kafka => match kafka::provision() {
            Ok(_) => Engine::Kafka,
            Err(e) if std::env::var("MLOPS_BROKER").as_deref() == Ok("kafka") => return Err(e),
            Err(e) => {
                println!("mlops: broker engine tansu: {e}");
                return Ok(Engine::Tansu);
            }
        },
        Engine::Tansu => Engine::Tansu,
    };
    println!("mlops: broker engine {} ({})", engine.name(), choice.reason);
    Ok(engine)
}

fn busy_ports(layout: &Layout, engine: Option<Engine>) -> Vec<String> {
    let mut wanted: Vec<(String, u16)> = layout
        .ports
        .iter()
        .map(|(s, p)| ((*s).to_owned(), *p))
        .collect();
    if let Some(engine) = engine {
        wanted.push(("broker".to_owned(), layout.broker_port));
        if engine == Engine::Kafka {
            wanted.push(("broker controller".to_owned(), layout.controller_port));
        }
    }
    let mut busy: Vec<String> = wanted
        .iter()
        .enumerate()
        .filter_map(|(i, (name, port))| {
            let other = wanted[..i].iter().find(|(_, p)| p == port)?;
            Some(format!("{name} {port} (also given to {})", other.0))
        })
        .collect();
    busy.extend(
        wanted
            .into_iter()
            .filter(|(_, port)| std::net::TcpListener::bind(("127.0.0.1", *port)).is_err())
            .map(|(name, port)| format!("{name} {port}")),
    );
    busy
}

/// Runs `command` as a child, restarting it with backoff whenever it dies, until stopped.
fn supervise(
    name: &'static str,
    mut command: Command,
    workdir: Option<PathBuf>,
    logs: &Path,
) -> Supervised {
    let logs = logs.to_path_buf();
    let stop = CancellationToken::new();
    let token = stop.clone();
    // A child in its own process group does not receive the terminal's Ctrl-C: the
    // launcher decides the order of shutdown. Its stdin is a pipe held by the launcher,
    // closed if the launcher dies, which makes the child exit (MLOPS_EXIT_WITH_PARENT).
    command
        .env("MLOPS_EXIT_WITH_PARENT", "1")
        .stdin(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    // The launcher supervises OS processes, not service work: one plain task per child.
    #[allow(clippy::disallowed_methods)]
    let task = tokio::spawn(async move {
        // Doubles from one second while the child keeps dying young.
        let mut backoff = Duration::from_secs(1);
        loop {
            if let Some(dir) = &workdir
                && let Err(e) = std::fs::create_dir_all(dir)
            {
                eprintln!("mlops: {name}: {}: {e}", dir.display());
            }
            let spawned = log_file(&logs, name).and_then(|(out, err)| {
                command.stdout(out).stderr(err);
                command.spawn()
            });
            let started = Instant::now();
            let mut child = match spawned {
                Ok(child) => child,
                Err(e) => {
                    eprintln!("mlops: {name} could not start: {e}");
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            };
            let _stdin = child.stdin.take();
            tokio::select! {
                status = child.wait() => {
                    let status = status.map_or_else(|e| e.to_string(), |s| s.to_string());
                    if started.elapsed() > Duration::from_secs(60) {
                        backoff = Duration::from_secs(1);
                    }
                    eprintln!(
                        "mlops: {name} exited ({status}); restarting in {}s (log: {})",
                        backoff.as_secs(),
                        logs.join(format!("{name}.log")).display()
                    );
                    tokio::select! {
                        () = token.cancelled() => return,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
                () = token.cancelled() => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
                    }
                    if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                        eprintln!("mlops: {name} did not stop within {}s, killing it", STOP_GRACE.as_secs());
                        let _ = child.kill().await;
                    }
                    return;
                }
            }
        }
    });
    Supervised { stop, task }
}

fn log_file(dir: &Path, name: &str) -> std::io::Result<(Stdio, Stdio)> {
    std::fs::create_dir_all(dir)?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(format!("{name}.log")))?;
    Ok((Stdio::from(file.try_clone()?), Stdio::from(file)))
}

#[cfg(test)]
mod tests {
    use super::build_notice;

    #[test]
    fn only_a_build_below_release_optimisation_is_called_out() {
        assert_eq!(build_notice("3"), None);
        for level in ["0", "1", "s"] {
            let notice = build_notice(level).expect("a notice");
            assert!(notice.contains(&format!("opt-level {level}")), "{notice}");
            assert!(notice.contains("cargo build --release"), "{notice}");
        }
    }
}
