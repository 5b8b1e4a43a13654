use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(
        ingestion::SERVICE,
        ingestion::default_config(),
        ingestion::run,
    )
}
