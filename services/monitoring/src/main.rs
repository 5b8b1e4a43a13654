use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(
        monitoring::SERVICE,
        monitoring::default_config(),
        monitoring::run,
    )
}
