//! `mlops`: the whole platform on one machine. See `mlops --help`.

mod audit;
mod broker;
mod certs;
mod closed_loop;
mod credentials;
mod demo;
mod jaeger;
mod kafka;
mod launcher;
mod platform;
mod status;
mod traces;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "mlops",
    version,
    about = "Event-driven MLOps platform: run it, check it, tell its story"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the embedded broker and all six services, supervise them until Ctrl-C.
    Up {
        /// Every API over HTTPS, with a local CA and per-service certificates
        /// (`<data dir>/tls`, created on first use).
        #[arg(long)]
        tls: bool,
        /// Also run Jaeger (OTLP in on 4317/4318, UI on http://localhost:16686), built once
        /// from the Go module proxy, and send every service's spans to it.
        #[arg(long)]
        jaeger: bool,
    },
    /// `up`, then tell the end-to-end story; keeps running for exploration unless --exit.
    Demo {
        /// Stop everything once the story is told; exit 0 only if every step succeeded.
        #[arg(long)]
        exit: bool,
        /// Give up on the story after this many seconds.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// As `up --tls`.
        #[arg(long)]
        tls: bool,
        /// As `up --jaeger`.
        #[arg(long)]
        jaeger: bool,
    },
    /// The platform's traces from Jaeger's query API: the latest of a service, or one trace
    /// as a tree of spans.
    Traces {
        /// A trace id (a drift event's `trace_id`, say): print that trace as a tree.
        trace: Option<String>,
        #[arg(long, default_value = "ingestion")]
        service: String,
        /// Only traces holding this operation (`"drift detected"`, say).
        #[arg(long)]
        operation: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
        /// Jaeger's query API.
        #[arg(
            long,
            env = "MLOPS_JAEGER_URL",
            default_value = "http://127.0.0.1:16686"
        )]
        jaeger: String,
    },
    /// Run Jaeger (all-in-one, in-memory) on loopback, building it from the Go module proxy
    /// the first time.
    Jaeger {
        #[arg(long, default_value_t = 4317)]
        otlp_grpc_port: u16,
        #[arg(long, default_value_t = 4318)]
        otlp_http_port: u16,
        /// The UI and the query API (`/api/traces`).
        #[arg(long, default_value_t = 16686)]
        ui_port: u16,
        /// Where its configuration file is written.
        #[arg(long, default_value = ".mlops/jaeger")]
        config_dir: std::path::PathBuf,
        /// Only build (when needed) and print the binary's path.
        #[arg(long)]
        install_only: bool,
    },
    /// Create a local CA and a certificate per service in `<data dir>/tls`.
    Certs,
    /// Issue the platform's first tokens into a directory (once; kept when present):
    /// `admin.token`, `producer.token`, `service.token` and the hashes the services check,
    /// `api-keys.json` — what `up` does for itself, for a deployment's init job.
    Credentials {
        #[arg(long)]
        dir: std::path::PathBuf,
    },
    /// Print the readiness of the broker and every service.
    Status,
    /// Run one service in this process (what `up` launches; also for standalone use).
    Service {
        #[arg(value_parser = clap::builder::PossibleValuesParser::new(platform::SERVICES))]
        name: String,
    },
    /// Run the embedded Kafka-compatible broker in this process.
    Broker,
    /// The audit trail: `mlops audit verify` checks every chain of `audit.log`.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Read every partition of audit.log and report the first broken link of each chain
    /// (exit 1 when one is broken).
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Service { name } => platform::run_service(&name),
        Command::Broker => broker::main(),
        Command::Up { tls, jaeger } => launcher::main(launcher::Mode::Up, tls, jaeger),
        Command::Demo {
            exit,
            timeout,
            tls,
            jaeger,
        } => launcher::main(
            launcher::Mode::Demo {
                exit,
                timeout: std::time::Duration::from_secs(timeout),
            },
            tls,
            jaeger,
        ),
        Command::Jaeger {
            otlp_grpc_port,
            otlp_http_port,
            ui_port,
            config_dir,
            install_only,
        } => jaeger::main(
            jaeger::Ports {
                otlp_grpc: otlp_grpc_port,
                otlp_http: otlp_http_port,
                ui: ui_port,
            },
            &config_dir,
            install_only,
        ),
        Command::Certs => certs::main(),
        Command::Traces {
            trace,
            service,
            operation,
            limit,
            jaeger,
        } => traces::main(traces::Query {
            jaeger,
            trace,
            service,
            operation,
            limit,
        }),
        Command::Credentials { dir } => credentials::main(&dir),
        Command::Status => status::main(),
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit::verify(),
    }
}
