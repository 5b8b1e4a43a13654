//! A service exports its spans over OTLP (HTTP/protobuf) when, and only because,
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set: an unmodified OTLP receiver gets a server span for
//! an API request, in the caller's trace, from a resource named after the service.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{Router, body::Bytes, extract::State, routing::post};
use mlops_testkit::free_port;
use nix::{sys::signal::Signal, unistd::Pid};
use opentelemetry_proto::tonic::{
    collector::trace::v1::ExportTraceServiceRequest, common::v1::any_value::Value,
    trace::v1::span::SpanKind,
};
use prost::Message;

type Received = Arc<Mutex<Vec<ExportTraceServiceRequest>>>;

async fn collect(State(received): State<Received>, body: Bytes) -> &'static str {
    let request = ExportTraceServiceRequest::decode(body).expect("OTLP protobuf");
    received.lock().unwrap().push(request);
    ""
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_in_the_callers_trace() {
    let received = Received::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}", listener.local_addr().unwrap());
    let app = Router::new()
        .route("/v1/traces", post(collect))
        .with_state(received.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });

    let dir = mlops_testkit::temp_dir();
    let port = free_port();
    let (token, key) = mlops_service::auth::ApiKeys::issue(mlops_service::auth::Principal {
        subject: "sre".to_owned(),
        roles: [mlops_service::auth::PlatformRole::Sre].into(),
        datasets: None,
    });
    let keys = dir.path().join("api-keys.json");
    std::fs::write(&keys, serde_json::to_vec(&[key]).unwrap()).unwrap();
    let mut service = Command::new(env!("CARGO_BIN_EXE_mlops"))
        .args(["service", "registry"])
        .env("MLOPS_REGISTRY_PORT", port.to_string())
        .env("MLOPS_DATA_DIR", dir.path())
        .env("MLOPS_API_KEYS_FILE", &keys)
        .env(
            "KAFKA_BOOTSTRAP_SERVERS",
            format!("127.0.0.1:{}", free_port()),
        )
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", &collector)
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        .env(
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test,service.namespace=mlops",
        )
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("start registry");

    let client = reqwest::Client::new();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let started = Instant::now();
    loop {
        let answer = client
            .get(format!("http://127.0.0.1:{port}/subjects"))
            .bearer_auth(&token)
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .send()
            .await;
        if matches!(answer, Ok(r) if r.status().is_success()) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "registry never answered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Stopping flushes what the batch exporter still holds.
    nix::sys::signal::kill(Pid::from_raw(service.id() as i32), Signal::SIGTERM).unwrap();
    let status = service.wait().unwrap();
    assert!(status.success(), "registry exited with {status}");

    let requests = received.lock().unwrap().clone();
    // The resource: the service's name and version, and what the operator added.
    let resource = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter_map(|rs| rs.resource.as_ref())
        .find(|resource| {
            resource.attributes.iter().any(|kv| {
                kv.key == "service.name"
                    && matches!(
                        kv.value.as_ref().and_then(|v| v.value.as_ref()),
                        Some(Value::StringValue(name)) if name == "registry"
                    )
            })
        })
        .expect("a resource named registry");
    let attribute = |key: &str| {
        resource
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref().and_then(|v| v.value.clone()))
    };
    assert_eq!(
        attribute("service.version"),
        Some(Value::StringValue(env!("CARGO_PKG_VERSION").to_owned()))
    );
    assert_eq!(
        attribute("deployment.environment"),
        Some(Value::StringValue("test".to_owned()))
    );
    assert_eq!(
        attribute("service.namespace"),
        Some(Value::StringValue("mlops".to_owned()))
    );
    let spans: Vec<_> = requests
        .iter()
        .flat_map(|r| &r.resource_spans)
        .filter(|rs| {
            rs.resource.as_ref().is_some_and(|resource| {
                resource.attributes.iter().any(|kv| {
                    kv.key == "service.name"
                        && matches!(
                            kv.value.as_ref().and_then(|v| v.value.as_ref()),
                            Some(Value::StringValue(name)) if name == "registry"
                        )
                })
            })
        })
        .flat_map(|rs| &rs.scope_spans)
        .flat_map(|ss| &ss.spans)
        .collect();
    let span = spans
        .iter()
        .find(|s| s.name == "GET /subjects")
        .unwrap_or_else(|| {
            panic!("no GET /subjects span from service.name=registry in {requests:?}")
        });
    assert_eq!(
        hex(&span.trace_id),
        trace_id,
        "span is not in the caller's trace"
    );
    assert_eq!(hex(&span.parent_span_id), "00f067aa0ba902b7");
    assert_eq!(span.kind, SpanKind::Server as i32);
    assert!(
        spans
            .iter()
            .all(|s| s.name != "GET /readyz" && s.name != "GET /healthz"),
        "admin probes should not be traced"
    );
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
