//! The embedded default at the size users reach: 50,000 events over HTTP into one dataset
//! on the embedded broker (Tansu on SQLite, as `mlops up` runs it) while a feature view
//! reads them, then an independent consumer reads the topic back from offset 0. Every
//! accepted event must come back exactly once, the view must catch up, and the services'
//! readiness must answer throughout. Before the broker indexed its header table, reading
//! a partition back was quadratic in its length and this stalled for many minutes.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use mlops_integration_tests::{TestIngestion, TestRegistry, TestService, ingestion_config};
use mlops_testkit::unique;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const EVENTS: usize = 50_000;
const CHUNK: usize = 500;
const PARTITIONS: i32 = 3;
/// How long the readers may take once every event is acknowledged.
const READ_BACK: Duration = Duration::from_secs(240);

fn event(i: usize) -> Value {
    json!({"txn_id": format!("t-{i}"), "customer_id": format!("c-{}", i % 1000),
           "amount": (i % 500) as f64 + 0.5, "ts": 1_795_651_200_000_i64 + i as i64 * 10})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_thousand_events_are_read_back_exactly_once_while_readiness_answers() {
    mlops_testkit::init_logs();
    let broker = mlops_testkit::tansu().await;
    let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
    let dir = mlops_testkit::temp_dir();
    let config = ingestion_config(dir.path(), &broker.bootstrap_servers, &registry.url);
    let ingestion = TestIngestion::start(config.clone()).await;
    let dataset = unique("load").replace('-', "_");
    let http = mlops_integration_tests::client();
    let declared = http
        .post(format!("{}/v1/datasets", ingestion.url))
        .json(&json!({
            "name": dataset, "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
            "partitions": PARTITIONS,
            "schema": {"type": "record", "name": "Payment", "namespace": "load", "fields": [
                {"name": "txn_id", "type": "string"},
                {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(declared.status(), StatusCode::CREATED);
    let topic = format!("raw.{dataset}");
    let feature = TestService::feature(feature::Config {
        common: config.common,
        feature: feature::Settings {
            intake_group: unique("intake"),
            raw_topics: format!("^raw\\.{dataset}$"),
            labels_group: unique("labels"),
            ..Default::default()
        },
    })
    .await;
    let view = unique("spend").replace('-', "_");
    let view_declared = http
        .post(format!("{}/v1/feature-views", feature.url))
        .json(&json!({
            "name": view, "source": dataset, "entity_key": "customer_id", "event_time": "ts",
            "allowed_lateness": "1m", "features": [{"name": "amount"}],
            "aggregations": [{"name": "amount_sum_1h", "column": "amount", "function": "sum", "window": "1h"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(view_declared.status(), StatusCode::CREATED);
    let view_group = format!(
        "feature.view.{view}.v{}",
        view_declared.json::<Value>().await.unwrap()["version"]
    );

    // Readiness of both services, probed throughout: a probe that gets no answer within
    // 10 s is a failure. (A 503 is an answer: a readiness check whose own metadata request
    // to the busy broker takes over 2 s says so; those are counted and shown.)
    let stop = Arc::new(AtomicBool::new(false));
    let (probes, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let not_ready = Arc::new(AtomicU64::new(0));
    let prober = {
        let urls = [
            format!("{}/readyz", ingestion.url),
            format!("{}/readyz", feature.url),
        ];
        let (stop, probes, failed) = (stop.clone(), probes.clone(), failed.clone());
        let not_ready = not_ready.clone();
        tokio::spawn(async move {
            let client = Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap();
            while !stop.load(Ordering::SeqCst) {
                for url in &urls {
                    probes.fetch_add(1, Ordering::SeqCst);
                    match client.get(url).send().await {
                        Ok(r) if r.status().is_success() => {}
                        Ok(r) => {
                            not_ready.fetch_add(1, Ordering::SeqCst);
                            let status = r.status();
                            eprintln!("{url}: {status} {}", r.text().await.unwrap_or_default());
                        }
                        Err(e) => {
                            failed.fetch_add(1, Ordering::SeqCst);
                            eprintln!("readiness probe got no answer: {url}: {e}");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        })
    };

    // 50,000 events from four concurrent producers, in NDJSON chunks.
    let chunks: Vec<Vec<usize>> = (0..EVENTS)
        .collect::<Vec<_>>()
        .chunks(CHUNK)
        .map(<[usize]>::to_vec)
        .collect();
    let url = format!("{}/v1/datasets/{dataset}/events", ingestion.url);
    let mut senders = tokio::task::JoinSet::new();
    for lane in 0..4 {
        let mine: Vec<Vec<usize>> = chunks.iter().skip(lane).step_by(4).cloned().collect();
        let (http, url) = (http.clone(), url.clone());
        senders.spawn(async move {
            let mut ends = BTreeMap::<i32, i64>::new();
            for chunk in mine {
                let lines: Vec<String> = chunk.iter().map(|i| event(*i).to_string()).collect();
                let response = http
                    .post(&url)
                    .header("content-type", "application/x-ndjson")
                    .body(lines.join("\n"))
                    .send()
                    .await
                    .expect("request");
                assert_eq!(response.status(), StatusCode::OK);
                let body: Value = response.json().await.unwrap();
                assert_eq!(body["accepted"], json!(chunk.len()), "{body}");
                for result in body["results"].as_array().unwrap() {
                    let partition = result["partition"].as_i64().unwrap() as i32;
                    let end = ends.entry(partition).or_default();
                    *end = (*end).max(result["offset"].as_i64().unwrap() + 1);
                }
            }
            ends
        });
    }
    let mut ends = BTreeMap::<i32, i64>::new();
    while let Some(lane) = senders.join_next().await {
        for (partition, end) in lane.expect("sender") {
            let all = ends.entry(partition).or_default();
            *all = (*all).max(end);
        }
    }
    assert_eq!(
        ends.values().sum::<i64>(),
        EVENTS as i64,
        "offsets beyond the accepted events: {ends:?}"
    );

    // An independent consumer reads every partition from offset 0.
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap_servers)
        .set("group.id", unique("independent"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut assignment = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        assignment
            .add_partition_offset(&topic, partition, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&assignment).unwrap();
    let codec = mlops_integration_tests::codec(&registry.url);
    let mut ids = HashSet::new();
    let mut duplicates = Vec::new();
    let deadline = tokio::time::Instant::now() + READ_BACK;
    while ids.len() + duplicates.len() < EVENTS {
        let message = tokio::time::timeout_at(deadline, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {EVENTS} events read back within {READ_BACK:?}",
                    ids.len()
                )
            })
            .expect("consume");
        let decoded = codec
            .decode_record(message.payload().unwrap())
            .await
            .expect("decodes");
        let id = match &decoded.value {
            apache_avro::types::Value::Record(fields) => match &fields[0].1 {
                apache_avro::types::Value::String(id) => id.clone(),
                other => panic!("txn_id is {other:?}"),
            },
            other => panic!("not a record: {other:?}"),
        };
        if !ids.insert(id.clone()) {
            duplicates.push(id);
        }
    }
    assert!(duplicates.is_empty(), "read twice: {duplicates:?}");
    assert_eq!(ids, (0..EVENTS).map(|i| format!("t-{i}")).collect());

    // The view's stream job has committed every partition's end.
    let group: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &broker.bootstrap_servers)
        .set("group.id", &view_group)
        .create()
        .expect("group reader");
    let mut partitions = TopicPartitionList::new();
    for partition in 0..PARTITIONS {
        partitions.add_partition(&topic, partition);
    }
    mlops_integration_tests::eventually(READ_BACK, || {
        let committed = group.committed_offsets(partitions.clone(), Duration::from_secs(10));
        let caught_up = committed.is_ok_and(|committed| {
            ends.iter().all(|(p, end)| {
                matches!(
                    committed.find_partition(&topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end
                )
            })
        });
        async move { caught_up }
    })
    .await
    .expect("the feature view read every event");

    stop.store(true, Ordering::SeqCst);
    prober.await.unwrap();
    assert!(probes.load(Ordering::SeqCst) > 0);
    assert_eq!(
        failed.load(Ordering::SeqCst),
        0,
        "readiness probes unanswered out of {} ({} answered not ready)",
        probes.load(Ordering::SeqCst),
        not_ready.load(Ordering::SeqCst)
    );
    eprintln!(
        "readiness: {} probes, {} answered not ready",
        probes.load(Ordering::SeqCst),
        not_ready.load(Ordering::SeqCst)
    );
    feature.stop().await;
    ingestion.stop().await;
}
