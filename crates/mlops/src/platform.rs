//! What the platform is made of: its services, their ports and where their data lives.
//! Every value can be overridden by the environment, as in production.

use std::{path::PathBuf, process::ExitCode};

use mlops_service::ports;

/// Services in start order: the registry first, since the others use its Schema Registry.
pub(crate) const SERVICES: [&str; 6] = [
    "registry",
    "ingestion",
    "feature",
    "training",
    "serving",
    "monitoring",
];

/// Runs service `name` in this process until it is told to stop.
pub(crate) fn run_service(name: &str) -> ExitCode {
    match name {
        "registry" => {
            mlops_service::main(registry::SERVICE, registry::default_config(), registry::run)
        }
        "ingestion" => mlops_service::main(
            ingestion::SERVICE,
            ingestion::default_config(),
            ingestion::run,
        ),
        "feature" => mlops_service::main(feature::SERVICE, feature::default_config(), feature::run),
        "training" => {
            mlops_service::main(training::SERVICE, training::default_config(), training::run)
        }
        "serving" => mlops_service::main(serving::SERVICE, serving::default_config(), serving::run),
        "monitoring" => mlops_service::main(
            monitoring::SERVICE,
            monitoring::default_config(),
            monitoring::run,
        ),
        other => {
            eprintln!("unknown service {other:?}; one of {SERVICES:?}");
            ExitCode::from(2)
        }
    }
}

fn default_port(service: &str) -> u16 {
    match service {
        "registry" => ports::REGISTRY,
        "ingestion" => ports::INGESTION,
        "feature" => ports::FEATURE,
        "training" => ports::TRAINING,
        "serving" => ports::SERVING,
        "monitoring" => ports::MONITORING,
        _ => ports::BROKER,
    }
}

fn env_port(var: &str, default: u16) -> Result<u16, String> {
    match std::env::var(var) {
        Ok(text) => text
            .parse()
            .map_err(|_| format!("{var}: expected a port number, got {text:?}")),
        Err(_) => Ok(default),
    }
}

/// The addresses and directories of one local platform.
#[derive(Debug, Clone)]
pub(crate) struct Layout {
    pub(crate) data_dir: PathBuf,
    pub(crate) broker_port: u16,
    /// The KRaft controller's port when the local broker is Apache Kafka.
    pub(crate) controller_port: u16,
    /// Set when `KAFKA_BOOTSTRAP_SERVERS` points at an external cluster: nothing embedded starts.
    pub(crate) external_bootstrap: Option<String>,
    pub(crate) schema_registry_url: Option<String>,
    pub(crate) ports: Vec<(&'static str, u16)>,
    /// The services speak HTTPS, with the certificates of `<data dir>/tls` (`mlops up
    /// --tls`, or `MLOPS_TLS=1` for the commands that talk to such a platform).
    pub(crate) tls: bool,
    /// Jaeger runs beside the platform and every service exports its spans to it
    /// (`mlops up --jaeger`).
    pub(crate) jaeger: bool,
}

impl Layout {
    pub(crate) fn from_env() -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut port = |var: &str, default: u16| {
            env_port(var, default).unwrap_or_else(|e| {
                errors.push(e);
                default
            })
        };
        let broker_port = port("MLOPS_BROKER_PORT", ports::BROKER);
        let controller_port = port("MLOPS_BROKER_CONTROLLER_PORT", broker_port.wrapping_add(1));
        let ports = SERVICES
            .iter()
            .map(|s| {
                (
                    *s,
                    port(
                        &format!("MLOPS_{}_PORT", s.to_ascii_uppercase()),
                        default_port(s),
                    ),
                )
            })
            .collect();
        let data_dir = std::env::var_os("MLOPS_DATA_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(".mlops"));
        let non_empty = |var: &str| std::env::var(var).ok().filter(|v| !v.trim().is_empty());
        if errors.is_empty() {
            Ok(Self {
                broker_port,
                controller_port,
                external_bootstrap: non_empty("KAFKA_BOOTSTRAP_SERVERS"),
                schema_registry_url: non_empty("SCHEMA_REGISTRY_URL"),
                tls: std::env::var("MLOPS_TLS").is_ok_and(|v| v == "1" || v == "true")
                    || data_dir.join("tls").join("active").exists(),
                jaeger: false,
                data_dir,
                ports,
            })
        } else {
            Err(errors)
        }
    }

    pub(crate) fn bootstrap_servers(&self) -> String {
        self.external_bootstrap
            .clone()
            .unwrap_or_else(|| format!("127.0.0.1:{}", self.broker_port))
    }

    pub(crate) fn port(&self, service: &str) -> u16 {
        self.ports
            .iter()
            .find(|(s, _)| *s == service)
            .map_or(0, |(_, p)| *p)
    }

    pub(crate) fn url(&self, service: &str) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port(service))
    }

    pub(crate) fn schema_registry(&self) -> String {
        self.schema_registry_url
            .clone()
            .unwrap_or_else(|| self.url("registry"))
    }
}
