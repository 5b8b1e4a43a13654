//! What an SRE's Prometheus sees under `mlops up`: consumer lag per partition, a record
//! that cannot be processed counted as a dead letter by topic and class, a refused event
//! counted by reason. (That every alert rule and dashboard panel names only exported
//! metrics is checked at the end of the closed loop, when every family has samples.)

// Tests drive the platform from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};

use serde_json::{Value, json};
use support::{Ports, admin_client, launch, wait_until_ready};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_dead_letters_and_refusals_are_on_metrics() {
    let dir = mlops_testkit::temp_dir();
    let data = dir.path().join("data");
    let ports = Ports::pick();
    let _launcher = launch(&data, &ports, None);
    wait_until_ready(&ports).await;
    let http = admin_client(&data, Duration::from_secs(30));
    let port = |service: &str| {
        ports
            .services
            .iter()
            .find(|(s, _)| *s == service)
            .unwrap()
            .1
    };
    let url = |service: &str, path: &str| format!("http://127.0.0.1:{}{path}", port(service));

    // A little traffic, so each consumer owns partitions with something in them.
    let dataset = "obs_events";
    let answer = http
        .post(url("ingestion", "/v1/datasets"))
        .json(&json!({
            "name": dataset, "key": "id", "event_time": "ts", "partitions": 2,
            "schema": {"type": "record", "name": "E", "fields": [
                {"name": "id", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
        }))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);
    let events: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("e-{i}"), "ts": 1_700_000_000_000_i64 + i}))
        .collect();
    let answer = http
        .post(url("ingestion", &format!("/v1/datasets/{dataset}/events")))
        .json(&events)
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_success(), "{:?}", answer.text().await);

    // The lag of the feature service's intake, per partition of the raw topic, once the
    // Kafka client has reported its statistics.
    let raw = format!("raw.{dataset}");
    let lag = mlops_testkit::until(
        "consumer lag per partition",
        Duration::from_secs(90),
        async || {
            let page = support::metrics::page(port("feature")).await?;
            let lines: Vec<String> = page
                .lines()
                .filter(|l| l.starts_with("mlops_consumer_lag{") && l.contains(&raw))
                .map(str::to_owned)
                .collect();
            (lines.len() >= 2)
                .then_some(lines)
                .ok_or_else(|| "no lag of both partitions yet".to_owned())
        },
    )
    .await;
    for partition in ["0", "1"] {
        assert!(
            lag.iter()
                .any(|l| l.contains(&format!("partition=\"{partition}\""))),
            "partition {partition}: {lag:?}"
        );
    }

    // A record that is not Avro, straight onto the raw topic: the feature service's intake
    // sends it to the dead-letter topic and counts it.
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", ports.bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::<str, [u8]>::to(&raw)
                .key("e-x")
                .payload(b"not avro"),
            Duration::from_secs(30),
        )
        .await
        .expect("produce a poison record");
    let dead = mlops_testkit::until(
        "the dead letter is counted",
        Duration::from_secs(90),
        async || {
            let page = support::metrics::page(port("feature")).await?;
            page.lines()
                .find(|l| l.starts_with("mlops_consumer_dead_letters_total{") && l.contains(&raw))
                .map(str::to_owned)
                .ok_or_else(|| "not yet".to_owned())
        },
    )
    .await;
    assert!(dead.contains("class=\""), "{dead}");
    assert!(dead.ends_with(" 1"), "{dead}");

    // An event missing its key is refused, and counted by reason.
    let answer = http
        .post(url("ingestion", &format!("/v1/datasets/{dataset}/events")))
        .json(&json!([{"ts": 1}]))
        .send()
        .await
        .unwrap();
    assert!(answer.status().is_client_error(), "{}", answer.status());
    let page = support::metrics::page(port("ingestion")).await.unwrap();
    assert!(
        page.lines()
            .any(|l| l.starts_with("mlops_ingestion_rejections_total{") && !l.ends_with(" 0")),
        "{page}"
    );
}
