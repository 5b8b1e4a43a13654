use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(registry::SERVICE, registry::default_config(), registry::run)
}
