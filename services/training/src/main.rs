use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(training::SERVICE, training::default_config(), training::run)
}
