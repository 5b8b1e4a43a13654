//! A feature service killed (SIGKILL) while its stream job writes batches: after a restart
//! the offline store holds each event's row exactly once and the online store equals a
//! fresh computation of the latest vectors.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    path::Path,
    time::{Duration, Instant},
};

use apache_avro::{Schema, types::Value, writer::datum::GenericDatumWriter};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, TopicSpec, ensure_topics};
use mlops_schema::AvroCodec;
use mlops_testkit::{free_port, unique};
use polars::prelude::*;
use serde_json::{Value as Json, json};
use tokio::{net::TcpListener, process::Child};
use tokio_util::sync::CancellationToken;

const EVENTS: i64 = 4_000;
const ENTITIES: i64 = 40;
const T0: i64 = 1_795_687_200_000;
const POLL: Duration = Duration::from_millis(50);

const SCHEMA: &str = r#"{"type": "record", "name": "Reading", "namespace": "crash",
  "fields": [{"name": "device", "type": "string"}, {"name": "ts", "type": "long"},
             {"name": "value", "type": "double"}]}"#;

fn view_spec(view: &str, dataset: &str) -> String {
    format!(
        r#"
name = "{view}"
source = "{dataset}"
entity_key = "device"
event_time = "ts"
allowed_lateness = "1d"

[[features]]
name = "value"

[[aggregations]]
name = "value_sum_10m"
column = "value"
function = "sum"
window = "10m"
"#
    )
}

async fn start_registry(bootstrap: &str, dir: &Path) -> (String, CancellationToken) {
    let mut config = registry::default_config();
    config.common.data_dir = dir.to_path_buf();
    config.common.kafka.bootstrap_servers = bootstrap.to_owned();
    // What a crash leaves behind is tested here; who may call is tests/security.rs.
    config.common.auth.mode = mlops_service::AuthMode::Disabled;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    config.common.schema_registry.url = url.clone();
    let cancel = CancellationToken::new();
    tokio::spawn(registry::run(config, listener, cancel.clone()));
    wait_for(&format!("{url}/subjects")).await;
    (url, cancel)
}

async fn wait_for(url: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    while !matches!(client.get(url).send().await, Ok(r) if r.status().is_success()) {
        assert!(Instant::now() < deadline, "{url} never answered");
        tokio::time::sleep(POLL).await;
    }
}

struct Service {
    env: Vec<(String, String)>,
    url: String,
    /// The service's log (both runs), shown when the test fails.
    log: std::path::PathBuf,
}

impl Service {
    fn spawn(&self) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        tokio::process::Command::new(env!("CARGO_BIN_EXE_feature"))
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env(
                "RUST_LOG",
                "info,feature=debug,librdkafka=warn,rdkafka=warn",
            )
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start the feature service")
    }
}

/// Every offline row of the view, read back as the platform reads it (a partition's
/// newest compacted file and the batch files after it; compaction may run meanwhile).
async fn offline_rows(data: &Path, view: &str) -> DataFrame {
    let store =
        feature::store::FeatureStore::open(&data.join("feature-store").display().to_string())
            .unwrap();
    store
        .read_frames(&format!("offline/{view}/v1/"))
        .await
        .unwrap()
        .expect("offline rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_batch_leaves_each_offline_row_once_and_a_recomputed_online_store() {
    mlops_testkit::init_logs();
    for broker in mlops_testkit::brokers().await {
        kill_and_restart(broker).await;
    }
}

async fn kill_and_restart(broker: mlops_testkit::TestBroker) {
    let bootstrap = broker.bootstrap_servers.clone();
    let dir = mlops_testkit::temp_dir();
    let (registry, _stop_registry) = start_registry(&bootstrap, dir.path()).await;

    // A dataset as ingestion would declare it: its schema and its raw topic.
    let dataset = unique("readings").replace('-', "_");
    let topic = format!("raw.{dataset}");
    let registered: Json = reqwest::Client::new()
        .post(format!("{registry}/subjects/{topic}-value/versions"))
        .header("content-type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"schema": SCHEMA}).to_string())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema_id = registered["id"].as_u64().unwrap() as u32;
    let kafka = KafkaConfig {
        bootstrap_servers: bootstrap.clone(),
        ..Default::default()
    };
    ensure_topics(&kafka, &[TopicSpec::new(&topic, 2)])
        .await
        .unwrap();
    let producer = Producer::new(
        &kafka,
        std::sync::Arc::new(AvroCodec::new(&registry).unwrap()),
    )
    .unwrap();
    let schema = Schema::parse_str(SCHEMA).unwrap();
    let writer = GenericDatumWriter::builder(&schema).build().unwrap();
    let sends = (0..EVENTS).map(|i| {
        let device = format!("d{}", i % ENTITIES);
        let body = writer
            .write_value_to_vec(Value::Record(vec![
                ("device".into(), Value::String(device.clone())),
                ("ts".into(), Value::Long(T0 + i * 1_000)),
                ("value".into(), Value::Double(i as f64)),
            ]))
            .unwrap();
        let payload = mlops_schema::frame(schema_id, &body);
        let producer = &producer;
        let topic = &topic;
        async move {
            producer
                .send_bytes(
                    topic,
                    Some(device.as_bytes()),
                    &payload,
                    OwnedHeaders::new(),
                )
                .await
                .unwrap()
        }
    });
    futures::future::join_all(sends).await;

    let view = unique("sums").replace('-', "_");
    let views = dir.path().join("views");
    std::fs::create_dir_all(&views).unwrap();
    std::fs::write(
        views.join(format!("{view}.toml")),
        view_spec(&view, &dataset),
    )
    .unwrap();
    let data = dir.path().join("data");
    let port = free_port();
    let service = Service {
        env: vec![
            ("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.clone()),
            ("SCHEMA_REGISTRY_URL".into(), registry.clone()),
            ("MLOPS_DATA_DIR".into(), data.display().to_string()),
            // What a crash leaves behind is tested here; who may call is tests/security.rs.
            ("MLOPS_AUTH_MODE".into(), "disabled".into()),
            ("MLOPS_FEATURE_PORT".into(), port.to_string()),
            (
                "MLOPS__FEATURE__VIEWS_DIR".into(),
                views.display().to_string(),
            ),
            ("MLOPS__FEATURE__BATCH_MAX_RECORDS".into(), "150".into()),
            // Compaction runs often here, so that kills also land inside it.
            ("MLOPS__FEATURE__COMPACT_EVERY_BATCHES".into(), "2".into()),
            ("MLOPS__FEATURE__COMPACT_MIN_FILES".into(), "2".into()),
            (
                "MLOPS__FEATURE__RAW_TOPICS".into(),
                format!("^raw\\.{dataset}$"),
            ),
            ("MLOPS__FEATURE__INTAKE_GROUP".into(), unique("intake")),
            ("MLOPS__FEATURE__LABELS_GROUP".into(), unique("labels")),
        ],
        url: format!("http://127.0.0.1:{port}"),
        log: dir.path().join("feature.log"),
    };
    let offline = data.join(format!("feature-store/offline/{view}/v1"));

    // Killed once a few batches are durable: batches are then being written back to back.
    let mut first = service.spawn();
    let deadline = Instant::now() + Duration::from_secs(120);
    while mlops_testkit::files_under(&offline).len() < 3 {
        assert!(Instant::now() < deadline, "the stream job wrote no batches");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    first.kill().await.unwrap();
    let written_before_restart = mlops_testkit::files_under(&offline).len();

    let _second = service.spawn();
    wait_for(&format!("{}/healthz", service.url)).await;
    // The run finishes once every device's last event is online.
    let client = reqwest::Client::new();
    let lookup = json!({"entity_ids": (0..ENTITIES).map(|d| format!("d{d}")).collect::<Vec<_>>()});
    let deadline = Instant::now() + Duration::from_secs(120);
    let online = loop {
        let response = client
            .post(format!(
                "{}/v1/feature-views/{view}/entities:lookup",
                service.url
            ))
            .json(&lookup)
            .send()
            .await
            .unwrap();
        let body: Json = response.json().await.unwrap_or(Json::Null);
        let done = body["results"].as_array().is_some_and(|results| {
            results.iter().enumerate().all(|(d, r)| {
                let last = EVENTS - ENTITIES + d as i64;
                r["event_time"] == T0 + last * 1_000
            })
        });
        if done {
            break body;
        }
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(&service.log).unwrap_or_default();
            let tail = &log[log.len().saturating_sub(20000)..];
            panic!("online store never complete: {body}\n--- service log ---\n{tail}");
        }
        tokio::time::sleep(POLL).await;
    };
    assert!(written_before_restart >= 3);
    let metrics = client
        .get(format!("{}/metrics", service.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let job = format!("{{job=\"view {view} v1\"}}");
    assert!(
        metrics.contains(&format!("mlops_feature_stream_failing{job} 0")),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!("mlops_feature_stream_batches_total{job} ")),
        "{metrics}"
    );

    // Each event's row exactly once, none missing.
    let rows = offline_rows(&data, &view).await;
    assert!(
        mlops_testkit::files_under(&offline).iter().any(|p| p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("compact-"))),
        "the batch files were compacted along the way"
    );
    assert_eq!(rows.height() as i64, EVENTS, "one offline row per event");
    let distinct = rows
        .clone()
        .lazy()
        .select([col("source_partition"), col("source_offset")])
        .unique(None, UniqueKeepStrategy::First)
        .collect()
        .unwrap();
    assert_eq!(distinct.height() as i64, EVENTS, "no event twice");

    // The online store equals a fresh computation: the last event of each device, with the
    // sum of its values over the 10 minutes up to it (events 1 s apart, 40 devices: every
    // 40th value, 15 of them in (t - 600 s, t]).
    for (d, result) in online["results"].as_array().unwrap().iter().enumerate() {
        let last = EVENTS - ENTITIES + d as i64;
        let expected: f64 = (0..15).map(|k| (last - k * ENTITIES) as f64).sum();
        assert_eq!(result["features"]["value"], last as f64);
        assert_eq!(result["features"]["value_sum_10m"], expected, "device d{d}");
    }
}
