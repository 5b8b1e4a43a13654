use std::process::ExitCode;

fn main() -> ExitCode {
    mlops_service::main(feature::SERVICE, feature::default_config(), feature::run)
}
