//! The outbox survives the registry dying between its commit and the publication: the
//! registry process is killed outright (SIGKILL) while changes it committed have not
//! reached the broker, and its events arrive after the restart — each sequence number
//! once, in order, followed by the changes made after.

// The test drives the registry binary from outside, as an operator would.
#![allow(clippy::disallowed_methods)]

use std::{process::Stdio, time::Duration};

use mlops_events::{ModelLifecycleEvent, topics};
use mlops_schema::AvroCodec;
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use tokio::process::{Child, Command};

fn start(dir: &std::path::Path, port: u16, bootstrap: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_registry"))
        .env("MLOPS_DATA_DIR", dir)
        .env("MLOPS_REGISTRY_PORT", port.to_string())
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("SCHEMA_REGISTRY_URL", format!("http://127.0.0.1:{port}"))
        // What a SIGKILL leaves behind is tested here; who may call is tests/security.rs.
        .env("MLOPS_AUTH_MODE", "disabled")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the registry")
}

async fn until<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    mlops_testkit::until(what, Duration::from_secs(60), async || {
        probe().await.ok_or_else(|| "not yet".to_owned())
    })
    .await
}

async fn healthy(http: &Client, url: &str) {
    until("the registry answers", async || {
        let response = http.get(format!("{url}/healthz")).send().await.ok()?;
        response.status().is_success().then_some(())
    })
    .await;
}

async fn register(http: &Client, url: &str, model: &str, weight: f64) -> Value {
    let response = http
        .post(format!("{url}/v1/models/{model}/versions"))
        .json(&json!({
            "artifact": {
                "model_name": model, "algorithm": "logistic_regression",
                "model": {"weights": [weight]}, "features": ["amount"],
                "transforms": [["amount", {}]], "view": "spend", "view_version": 1,
                "snapshot_id": "snap", "metrics": {"accuracy": weight}, "created_at": 0,
            },
            "reason": "passed the gate", "actor": "training",
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    response.json().await.unwrap()
}

async fn summary(http: &Client, url: &str, model: &str) -> Value {
    http.get(format!("{url}/v1/models/{model}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_committed_before_a_sigkill_are_published_after_the_restart_once_each() {
    let dir = mlops_testkit::temp_dir();
    let port = mlops_testkit::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let http = Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let model = mlops_testkit::unique("fraud");

    // The broker is unreachable: the registry commits, and cannot publish.
    let nowhere = format!("127.0.0.1:{}", mlops_testkit::free_port());
    let mut registry = start(dir.path(), port, &nowhere);
    healthy(&http, &url).await;
    assert_eq!(
        register(&http, &url, &model, 0.8).await["stage"],
        "production"
    );
    let lifecycle = summary(&http, &url, &model).await["lifecycle"].clone();
    assert_eq!(
        lifecycle,
        json!({"last_sequence": 2, "published_sequence": 0})
    );
    registry.kill().await.unwrap();

    // Back, with a broker: the outbox is drained, then new changes follow.
    let broker = mlops_testkit::tansu().await;
    let mut registry = start(dir.path(), port, &broker.bootstrap_servers);
    healthy(&http, &url).await;
    assert_eq!(register(&http, &url, &model, 0.9).await["stage"], "canary");
    until("the outbox drained", async || {
        let summary = summary(&http, &url, &model).await;
        (summary["lifecycle"]["published_sequence"] == 4).then_some(())
    })
    .await;

    #[allow(clippy::disallowed_methods)]
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap_servers)
        .set("group.id", mlops_testkit::unique("subscriber"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    consumer.subscribe(&[topics::MODELS_LIFECYCLE]).unwrap();
    let codec = AvroCodec::new(&url).unwrap();
    let mut seen = Vec::new();
    // One partition per model (the key): everything before sequence 4 arrives before it.
    while seen
        .last()
        .is_none_or(|e: &ModelLifecycleEvent| e.sequence < 4)
    {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv())
            .await
            .expect("lifecycle events within a minute")
            .unwrap();
        let event: ModelLifecycleEvent = codec.decode(message.payload().unwrap()).await.unwrap();
        if event.model_name == model {
            seen.push(event);
        }
    }
    let order: Vec<(i64, i32, &str)> = seen
        .iter()
        .map(|e| {
            (
                e.sequence,
                e.version,
                match e.stage {
                    mlops_events::ModelStage::Candidate => "candidate",
                    mlops_events::ModelStage::Canary => "canary",
                    mlops_events::ModelStage::Production => "production",
                    mlops_events::ModelStage::Archived => "archived",
                },
            )
        })
        .collect();
    assert_eq!(
        order,
        [
            (1, 1, "candidate"),
            (2, 1, "production"),
            (3, 2, "candidate"),
            (4, 2, "canary")
        ]
    );
    registry.kill().await.unwrap();
}
