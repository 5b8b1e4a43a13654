use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(serving::SERVICE, serving::default_config(), serving::run)
}
