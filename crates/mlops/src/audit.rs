//! `mlops audit verify`: reads every partition of `audit.log` from the broker and checks
//! its hash chain, independently of the registry's copy; names the first broken link.

use std::process::ExitCode;

use crate::platform::Layout;

pub(crate) fn verify() -> ExitCode {
    let layout = match Layout::from_env() {
        Ok(layout) => layout,
        Err(errors) => {
            eprintln!("mlops audit: {}", errors.join("; "));
            return ExitCode::from(2);
        }
    };
    let common = crate::status::admin_config(&layout);
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let reports = runtime.block_on(mlops_service::audit::verify_log(
        &common.kafka,
        &common.codec(),
    ));
    let reports = match reports {
        Ok(reports) => reports,
        Err(e) => {
            eprintln!("mlops audit verify: cannot read audit.log: {e}");
            return ExitCode::from(2);
        }
    };
    let mut intact = true;
    for report in &reports {
        match &report.broken {
            None => println!(
                "audit.log partition {}: {} records, chain intact",
                report.partition, report.records
            ),
            Some(link) => {
                intact = false;
                println!(
                    "audit.log partition {}: BROKEN after {} good records: {link}",
                    report.partition, report.records
                );
            }
        }
    }
    if intact {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
