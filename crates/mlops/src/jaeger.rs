//! `mlops jaeger`: a real Jaeger (v2, all-in-one, in-memory storage) next to the platform,
//! so its traces can be looked at in Jaeger's UI and read through Jaeger's query API.
//!
//! Jaeger is built from the Go module proxy once, from the module pinned in
//! `infra/jaeger/go.mod` and `go.sum` (compiled into this binary), into the same cache as
//! Kafka's jars: about four minutes on two cores, a 120 MB binary. A failed build is an
//! error naming what failed; nothing falls back to another trace store.

use std::{
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

const GO_MOD: &str = include_str!("../../../infra/jaeger/go.mod");
const GO_SUM: &str = include_str!("../../../infra/jaeger/go.sum");
const PACKAGE: &str = "github.com/jaegertracing/jaeger/cmd/jaeger";

/// The ports Jaeger listens on (loopback).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ports {
    pub otlp_grpc: u16,
    pub otlp_http: u16,
    pub ui: u16,
}

impl Ports {
    /// Jaeger's defaults, or `MLOPS_JAEGER_OTLP_GRPC_PORT`, `MLOPS_JAEGER_OTLP_HTTP_PORT`
    /// and `MLOPS_JAEGER_UI_PORT` (for `up --jaeger`).
    pub(crate) fn from_env() -> Result<Self, String> {
        let defaults = Self::default();
        let port = |name: &str, default: u16| match std::env::var(name) {
            Err(_) => Ok(default),
            Ok(text) => text
                .parse()
                .map_err(|_| format!("{name}: {text:?} is not a port")),
        };
        Ok(Self {
            otlp_grpc: port("MLOPS_JAEGER_OTLP_GRPC_PORT", defaults.otlp_grpc)?,
            otlp_http: port("MLOPS_JAEGER_OTLP_HTTP_PORT", defaults.otlp_http)?,
            ui: port("MLOPS_JAEGER_UI_PORT", defaults.ui)?,
        })
    }
}

impl Default for Ports {
    /// Jaeger's own defaults: OTLP on 4317/4318, UI and query API on 16686.
    fn default() -> Self {
        Self {
            otlp_grpc: 4317,
            otlp_http: 4318,
            ui: 16686,
        }
    }
}

/// The Jaeger version `infra/jaeger/go.mod` pins.
pub(crate) fn version() -> &'static str {
    GO_MOD
        .lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix("github.com/jaegertracing/jaeger "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or("unknown")
}

/// The cached binary, built first when it is not there yet.
pub(crate) fn binary() -> Result<PathBuf, String> {
    let dir = crate::kafka::cache_dir().join(format!("jaeger-{}", version()));
    let binary = dir.join("jaeger");
    if binary.is_file() {
        return Ok(binary);
    }
    if !crate::kafka::on_path("go") {
        return Err(format!(
            "Jaeger {} is built from the Go module proxy, and `go` is not on PATH",
            version()
        ));
    }
    eprintln!(
        "mlops: building Jaeger {} from the Go module proxy into {} (once; a few minutes)",
        version(),
        dir.display()
    );
    // Built in a fresh directory renamed at the end: an interrupted build is never taken
    // for a finished one.
    let partial = dir.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).map_err(|e| format!("{}: {e}", partial.display()))?;
    for (name, text) in [("go.mod", GO_MOD), ("go.sum", GO_SUM)] {
        std::fs::write(partial.join(name), text)
            .map_err(|e| format!("{}: {e}", partial.join(name).display()))?;
    }
    let status = Command::new("go")
        .args(["build", "-o", "jaeger", PACKAGE])
        .current_dir(&partial)
        .status()
        .map_err(|e| format!("go build: {e}"))?;
    if !status.success() {
        return Err(format!(
            "building Jaeger {} failed ({status}); the output above says why",
            version()
        ));
    }
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::rename(&partial, &dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok(binary)
}

/// Jaeger's configuration: OTLP in, memory storage, the query API and UI, and nothing
/// else listening (no sampling, zipkin or self-metrics ports to collide with).
pub(crate) fn config(ports: Ports) -> String {
    let Ports {
        otlp_grpc,
        otlp_http,
        ui,
    } = ports;
    format!(
        "service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [batch]
      exporters: [jaeger_storage_exporter]
  telemetry:
    resource:
      service.name: jaeger
    metrics:
      level: none
    logs:
      level: warn
extensions:
  jaeger_query:
    storage:
      traces: memory
    http:
      endpoint: 127.0.0.1:{ui}
    grpc:
      endpoint: 127.0.0.1:0
  jaeger_storage:
    backends:
      memory:
        memory:
          max_traces: 100000
receivers:
  otlp:
    protocols:
      grpc:
        endpoint: 127.0.0.1:{otlp_grpc}
      http:
        endpoint: 127.0.0.1:{otlp_http}
processors:
  batch:
    timeout: 200ms
exporters:
  jaeger_storage_exporter:
    trace_storage: memory
"
    )
}

/// `mlops jaeger`: builds Jaeger if needed, then becomes it (or only prints the binary's
/// path with `install_only`).
pub(crate) fn main(ports: Ports, config_dir: &Path, install_only: bool) -> ExitCode {
    let binary = match binary() {
        Ok(binary) => binary,
        Err(e) => {
            eprintln!("mlops jaeger: {e}");
            return ExitCode::FAILURE;
        }
    };
    if install_only {
        println!("{}", binary.display());
        return ExitCode::SUCCESS;
    }
    let file = config_dir.join("jaeger.yaml");
    if let Err(e) =
        std::fs::create_dir_all(config_dir).and_then(|()| std::fs::write(&file, config(ports)))
    {
        eprintln!("mlops jaeger: {}: {e}", file.display());
        return ExitCode::FAILURE;
    }
    // Replaces this process: a supervisor that stops `mlops jaeger` stops Jaeger itself;
    // setpriv (util-linux) has the kernel stop it too should the supervisor be killed.
    let mut command = if crate::kafka::on_path("setpriv") {
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "TERM"]).arg(&binary);
        command
    } else {
        Command::new(&binary)
    };
    let error = command.arg(format!("--config={}", file.display())).exec();
    eprintln!("mlops jaeger: {}: {error}", binary.display());
    ExitCode::FAILURE
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pinned_version_is_read_from_go_mod() {
        assert!(version().starts_with('v'), "{}", version());
        assert!(GO_SUM.contains("github.com/jaegertracing/jaeger "));
    }
}
