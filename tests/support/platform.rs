//! A platform for tests: a broker, the registry, ingestion with a `payments` dataset
//! declared, and the feature service, driven over their public APIs.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    io::Cursor,
    time::{Duration, Instant},
};

use mlops_events::{GroundTruthLabel, LabelValue, topics};
use mlops_kafka::{OwnedHeaders, Producer};
use mlops_testkit::{TestBroker, unique};
use polars::prelude::*;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

use crate::{TestIngestion, TestRegistry, TestService, ingestion_config};

pub const MINUTE: i64 = 60_000;
/// Interval between polls of an eventually-true condition.
pub const POLL: Duration = Duration::from_millis(100);
/// 2026-11-26T10:00:00Z.
pub const T0: i64 = 1_795_687_200_000;

pub struct Platform {
    pub broker: TestBroker,
    pub registry: TestRegistry,
    pub ingestion: TestIngestion,
    pub feature: TestService,
    pub dataset: String,
    /// Where the services keep their data.
    pub dir: tempfile::TempDir,
    pub http: Client,
}

impl Platform {
    pub async fn start() -> Self {
        Self::start_with_feature_workers(None).await
    }

    /// On `broker` (the feature service in this process).
    pub async fn start_on(broker: TestBroker) -> Self {
        Self::start_with(broker, None).await
    }

    /// With `Some(n)`, the feature service runs on a runtime of its own with `n` workers.
    pub async fn start_with_feature_workers(feature_workers: Option<usize>) -> Self {
        Self::start_with(mlops_testkit::tansu().await, feature_workers).await
    }

    /// Ingestion and feature service of residency region `region`.
    pub async fn start_in_region(region: &str) -> Self {
        Self::start_configured(mlops_testkit::tansu().await, None, Some(region)).await
    }

    async fn start_with(broker: TestBroker, feature_workers: Option<usize>) -> Self {
        Self::start_configured(broker, feature_workers, None).await
    }

    async fn start_configured(
        broker: TestBroker,
        feature_workers: Option<usize>,
        region: Option<&str>,
    ) -> Self {
        mlops_testkit::init_logs();
        let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
        let dir = mlops_testkit::temp_dir();
        let mut config = ingestion_config(dir.path(), &broker.bootstrap_servers, &registry.url);
        config.common.region = region.map(str::to_owned);
        let ingestion = TestIngestion::start(config.clone()).await;
        let dataset = unique("payments").replace('-', "_");
        // Bounded, so that a request that never gets an answer fails the test where it
        // was made instead of hanging the suite.
        let http = crate::auth::client_builder()
            .timeout(Duration::from_secs(120))
            .build()
            .expect("http client");
        let declared = http
            .post(format!("{}/v1/datasets", ingestion.url))
            .json(&json!({
                "name": dataset,
                "schema": {"type": "record", "name": "Payment", "namespace": "shop", "fields": [
                    {"name": "txn_id", "type": "string"},
                    {"name": "customer_id", "type": "string"},
                    {"name": "amount", "type": "double"},
                    {"name": "currency", "type": "string"},
                    {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}
                ]},
                "key": "customer_id", "event_time": "ts", "event_id": "txn_id", "partitions": 2
            }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            declared.status(),
            StatusCode::CREATED,
            "{:?}",
            declared.text().await
        );
        let feature_config = feature::Config {
            common: config.common,
            feature: feature::Settings {
                intake_group: unique("intake"),
                raw_topics: format!("^raw\\.{dataset}$"),
                labels_group: unique("labels"),
                batch_max_wait_ms: 50,
                ..Default::default()
            },
        };
        let feature = match feature_workers {
            None => TestService::feature(feature_config).await,
            Some(workers) => TestService::feature_alone(feature_config, workers).await,
        };
        Self {
            broker,
            registry,
            ingestion,
            feature,
            dataset,
            dir,
            http,
        }
    }

    pub fn view_spec(&self, name: &str, window: &str) -> Value {
        json!({
            "name": name,
            "source": self.dataset,
            "entity_key": "customer_id",
            "event_time": "ts",
            "allowed_lateness": "10m",
            "features": [
                {"name": "amount", "impute": "mean", "scale": "zscore"},
                {"name": "currency", "encode": "onehot"}
            ],
            "aggregations": [
                {"name": "amount_sum", "column": "amount", "function": "sum", "window": window},
                {"name": "payments", "function": "count", "window": window},
                {"name": "amount_max", "column": "amount", "function": "max", "window": window}
            ]
        })
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        crate::post_json(&self.http, &format!("{}{path}", self.feature.url), body).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        crate::get_json(&self.http, &format!("{}{path}", self.feature.url)).await
    }

    pub async fn events(&self, events: &[Value]) {
        let response = self
            .http
            .post(format!(
                "{}/v1/datasets/{}/events",
                self.ingestion.url, self.dataset
            ))
            .json(&json!(events))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{:?}",
            response.text().await
        );
    }

    pub async fn labels(&self, labels: &[(&str, &str, i64, f64)]) {
        let codec = std::sync::Arc::new(crate::codec(&self.registry.url));
        let kafka = mlops_kafka::KafkaConfig {
            bootstrap_servers: self.broker.bootstrap_servers.clone(),
            ..Default::default()
        };
        let producer = Producer::new(&kafka, codec).unwrap();
        for (id, entity, time, value) in labels {
            let label = GroundTruthLabel {
                label_id: (*id).to_owned(),
                dataset: self.dataset.clone(),
                entity_id: (*entity).to_owned(),
                request_id: None,
                label: LabelValue::Number(*value),
                event_time: *time,
                received_at: mlops_events::now_millis(),
                trace_id: None,
            };
            producer
                .send_event(
                    topics::LABELS,
                    Some(entity.as_bytes()),
                    &label,
                    OwnedHeaders::new(),
                )
                .await
                .unwrap();
        }
    }

    /// Waits until the online vector of `entity` is `version`'s at `event_time`; returns it.
    pub async fn online_at(
        &self,
        view: &str,
        version: i32,
        entity: &str,
        event_time: i64,
    ) -> Value {
        let path = format!("/v1/feature-views/{view}/entities/{entity}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.get(&path).await;
            if status == StatusCode::OK
                && body["event_time"] == event_time
                && body["view_version"] == version
            {
                return body;
            }
            assert!(
                Instant::now() < deadline,
                "online vector of {entity} at {event_time}, version {version}: last {body}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Builds a training set once `rows` labels are in.
    pub async fn training_set(&self, request: &Value, rows: usize) -> (StatusCode, Value) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) = self.post("/v1/training-sets", request).await;
            if body["rows"] == rows {
                return (status, body);
            }
            assert!(
                Instant::now() < deadline,
                "training set of {rows} rows: last {status} {body}"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn snapshot_data(&self, id: &str) -> DataFrame {
        let bytes = self
            .http
            .get(format!("{}/v1/training-sets/{id}/data", self.feature.url))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        ParquetReader::new(Cursor::new(bytes.to_vec()))
            .finish()
            .unwrap()
    }
}

pub fn payment(txn: &str, customer: &str, minute: i64, amount: f64, currency: &str) -> Value {
    json!({"txn_id": txn, "customer_id": customer, "amount": amount, "currency": currency,
           "ts": T0 + minute * MINUTE})
}

impl Platform {
    /// The training service wired to this platform's feature service, registry and broker.
    pub fn training_config(&self, cooldown_ms: u64) -> training::Config {
        let mut config = training::default_config();
        config.common.data_dir = self.dir.path().join(unique("training"));
        config.common.kafka.bootstrap_servers = self.broker.bootstrap_servers.clone();
        config.common.schema_registry.url = self.registry.url.clone();
        crate::auth::secure(&mut config.common);
        config.training.feature_url = self.feature.url.clone();
        config.training.registry_url = self.registry.url.clone();
        config.training.cooldown_ms = cooldown_ms;
        config.training.requests_group = unique("training-requests");
        config
    }

    pub async fn training(&self, cooldown_ms: u64) -> TestService {
        let config = self.training_config(cooldown_ms);
        TestService::run(|listener, cancel| training::run(config, listener, cancel)).await
    }

    /// A feature view on the payments of forty customers, every other one a big spender,
    /// labelled (big spenders positive) through the labels API, and its training set
    /// ready. Returns the view's name.
    pub async fn labelled_spend(&self) -> String {
        let view = unique("spend").replace('-', "_");
        let (status, declared) = self
            .post("/v1/feature-views", &self.view_spec(&view, "1h"))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{declared}");
        let events: Vec<Value> = (0..40)
            .map(|i| {
                let amount = if i % 2 == 0 {
                    80.0 + i as f64
                } else {
                    5.0 + i as f64 / 10.0
                };
                payment(&format!("t{i}"), &format!("c{i}"), i, amount, "EUR")
            })
            .collect();
        self.events(&events).await;
        self.online_at(&view, 1, "c39", T0 + 39 * MINUTE).await;
        let labels: String = (0..40)
            .map(|i| {
                json!({"entity_id": format!("c{i}"), "label": i % 2 == 0, "event_time": T0 + (i + 1) * MINUTE})
                    .to_string()
                    + "\n"
            })
            .collect();
        let response = self
            .http
            .post(format!(
                "{}/v1/datasets/{}/labels",
                self.ingestion.url, self.dataset
            ))
            .header("content-type", "application/x-ndjson")
            .body(labels)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        self.training_set(&json!({"view": view}), 40).await;
        view
    }
}
