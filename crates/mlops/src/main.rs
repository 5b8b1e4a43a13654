//! `mlops`: the whole platform on one machine. See `mlops --help`.

mod audit;
mod broker;
mod certs;
mod closed_loop;
mod credentials;
mod demo;
mod kafka;
mod launcher;
mod platform;
mod status;

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
    },
    /// Create a local CA and a certificate per service in `<data dir>/tls`.
    Certs,
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
        Command::Up { tls } => launcher::main(launcher::Mode::Up, tls),
        Command::Demo { exit, timeout, tls } => launcher::main(
            launcher::Mode::Demo {
                exit,
                timeout: std::time::Duration::from_secs(timeout),
            },
            tls,
        ),
        Command::Certs => certs::main(),
        Command::Status => status::main(),
        Command::Audit {
            command: AuditCommand::Verify,
        } => audit::verify(),
    }
}
