//! `mlops status` and the readiness polling shared with `up` and `demo`.

use std::{process::ExitCode, time::Duration};

use crate::platform::{Layout, SERVICES};

/// What a command needs to reach the platform as its admin: the bus, the Schema
/// Registry, the admin token (`MLOPS_TOKEN`, else `<data dir>/admin.token`) and, on a
/// platform started with `--tls`, its CA.
pub(crate) fn admin_config(layout: &Layout) -> mlops_service::CommonConfig {
    let mut common = mlops_service::CommonConfig::default();
    common.kafka.bootstrap_servers = layout.bootstrap_servers();
    common.schema_registry.url = layout.schema_registry();
    common.auth.service_token =
        crate::credentials::admin_token(&layout.data_dir).map(mlops_runtime::Secret::new);
    if layout.tls {
        common.tls.ca_file = Some(crate::certs::Certs::of(&layout.data_dir).ca());
    }
    common
}

/// The launcher's HTTP client: every request it makes is bounded in time, and presents
/// the admin token.
pub(crate) fn http(layout: &Layout) -> reqwest::Client {
    admin_config(layout).http_client(Duration::from_secs(10))
}

/// Readiness of one component: `Ok` with a short word, or the reason it is not ready.
pub(crate) async fn readiness(client: &reqwest::Client, url: &str) -> Result<String, String> {
    let response = client
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| {
            if e.is_connect() {
                "not running".to_owned()
            } else {
                e.to_string()
            }
        })?;
    let ready = response.status().is_success();
    let body: serde_json::Value = response.json().await.map_err(|e| e.to_string())?;
    if ready {
        Ok("ready".to_owned())
    } else {
        let failing: Vec<String> = body["checks"]
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(_, v)| v.as_str() != Some("ok"))
            .map(|(k, v)| format!("{k}: {}", v.as_str().unwrap_or_default()))
            .collect();
        Err(format!("not ready ({})", failing.join("; ")))
    }
}

/// One line per component; true when all are ready.
pub(crate) async fn report(layout: &Layout) -> bool {
    let client = http(layout);
    let mut all_ready = true;
    let broker = layout.bootstrap_servers();
    let broker_up = tokio::net::TcpStream::connect(broker.split(',').next().unwrap_or_default())
        .await
        .is_ok();
    all_ready &= broker_up;
    line(
        "broker",
        &broker,
        if broker_up { "ready" } else { "not running" },
    );
    for service in SERVICES {
        let url = layout.url(service);
        let state = readiness(&client, &url).await;
        all_ready &= state.is_ok();
        line(service, &url, &state.unwrap_or_else(|e| e));
    }
    all_ready
}

/// A reader that stops early (`mlops status | head -2`) is not an error of ours.
fn line(component: &str, address: &str, state: &str) {
    use std::io::Write;
    let _ = writeln!(
        std::io::stdout().lock(),
        "  {component:<11} {address:<28} {state}"
    );
}

pub(crate) fn main() -> ExitCode {
    let layout = match Layout::from_env() {
        Ok(layout) => layout,
        Err(errors) => {
            eprintln!("mlops status: {}", errors.join("; "));
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if runtime.block_on(report(&layout)) {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
