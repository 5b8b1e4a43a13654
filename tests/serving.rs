//! The serving service through the Open Inference Protocol: versions loaded from the
//! registry (verified), raw features through the artifact's own transforms, the
//! protocol's tensor and error shapes, sticky canary routing, and versions swapped by
//! `models.lifecycle` without a failed request.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    collections::BTreeSet,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mlops_integration_tests::{TestRegistry, TestService, eventually};
use mlops_ml::{
    EncodeState, FittedState, ModelArtifact, ScaleState,
    transforms::{Encode, Scale},
};
use mlops_testkit::unique;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};
use training::trainer::{Algorithm, Examples, fit};

/// Amount z-scored around 50 (spread 10) and currency one-hot: big amounts are positive.
fn transforms() -> Vec<(String, FittedState)> {
    vec![
        (
            "amount".into(),
            FittedState {
                scale: Some(ScaleState {
                    kind: Scale::Zscore,
                    center: 50.0,
                    spread: 10.0,
                }),
                ..FittedState::default()
            },
        ),
        (
            "currency".into(),
            FittedState {
                encode: Some(EncodeState {
                    kind: Encode::Onehot,
                    categories: vec!["EUR".into(), "USD".into()],
                }),
                ..FittedState::default()
            },
        ),
    ]
}

/// A logistic regression on `width` transformed inputs (the z-scored amount, the two
/// currency columns, then a made-up extra); `flip` learns the opposite.
fn logistic_regression(width: usize, flip: bool) -> serde_json::Value {
    let n = 200;
    let inputs = ndarray::Array2::from_shape_fn((n, width), |(r, c)| match c {
        0 => (r as f64 / 2.0 - 50.0) / 10.0,
        1 => f64::from(u8::from(r % 2 == 0)),
        2 => f64::from(u8::from(r % 2 == 1)),
        _ => (r % 7) as f64,
    });
    let labels = (0..n).map(|r| (r as f64 / 2.0 > 50.0) != flip).collect();
    let params = [("alpha".to_owned(), 0.01)].into_iter().collect();
    fit(
        Algorithm::LogisticRegression,
        &params,
        &Examples::binary(inputs, labels),
    )
    .unwrap()
    .to_json()
}

/// A logistic regression fitted on transformed rows; `flip` learns the opposite.
fn artifact(model: &str, flip: bool) -> ModelArtifact {
    ModelArtifact {
        model_name: model.to_owned(),
        algorithm: "logistic_regression".into(),
        model: logistic_regression(3, flip),
        task: "binary_classification".into(),
        classes: Vec::new(),
        features: vec![
            "amount".into(),
            "currency__EUR".into(),
            "currency__USD".into(),
        ],
        transforms: transforms(),
        view: "spend".into(),
        view_version: 1,
        snapshot_id: "snap".into(),
        metrics: Default::default(),
        created_at: 0,
    }
}

struct Setup {
    _broker: mlops_testkit::TestBroker,
    registry: TestRegistry,
    http: Client,
    model: String,
}

impl Setup {
    async fn start() -> Self {
        mlops_testkit::init_logs();
        let broker = mlops_testkit::tansu().await;
        let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
        Self {
            _broker: broker,
            registry,
            http: mlops_integration_tests::client(),
            model: unique("fraud"),
        }
    }

    async fn register(&self, flip: bool) -> Value {
        self.register_at(flip, None).await
    }

    /// With `canary_percent` when it enters canary (0: a shadow).
    async fn register_at(&self, flip: bool, canary_percent: Option<f64>) -> Value {
        let mut body = json!({"artifact": artifact(&self.model, flip), "actor": "test",
                              "reason": "passed the gate"});
        if let Some(percent) = canary_percent {
            body["canary_percent"] = json!(percent);
        }
        let response = self
            .http
            .post(format!(
                "{}/v1/models/{}/versions",
                self.registry.url, self.model
            ))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::CREATED);
        response.json().await.unwrap()
    }

    async fn serving(&self) -> TestService {
        let mut config = serving::default_config();
        config.common.kafka.bootstrap_servers = self._broker.bootstrap_servers.clone();
        config.common.schema_registry.url = self.registry.url.clone();
        config.serving.registry_url = self.registry.url.clone();
        mlops_integration_tests::auth::secure(&mut config.common);
        let service =
            TestService::run(|listener, cancel| serving::run(config, listener, cancel)).await;
        let ready = format!("{}/v2/health/ready", service.url);
        let http = self.http.clone();
        eventually(Duration::from_secs(30), || {
            let request = http.get(&ready).send();
            async move { matches!(request.await, Ok(r) if r.status() == StatusCode::OK) }
        })
        .await
        .expect("serving is ready");
        service
    }

    /// The first `count` records of the model's prediction log, decoded.
    async fn logged_predictions(&self, count: usize) -> Vec<mlops_events::PredictionLog> {
        let codec = mlops_integration_tests::codec(&self.registry.url);
        let records = mlops_integration_tests::read_topic(
            &self._broker.bootstrap_servers,
            &mlops_events::topics::predictions(&self.model),
            count,
        )
        .await;
        let mut logged = Vec::new();
        for record in &records {
            let payload = rdkafka::Message::payload(record).unwrap();
            logged.push(codec.decode(payload).await.unwrap());
        }
        logged
    }

    async fn infer(&self, url: &str, body: &Value) -> (StatusCode, Value) {
        let url = format!("{url}/v2/models/{}/infer", self.model);
        mlops_integration_tests::post_json(&self.http, &url, body).await
    }
}

fn two_rows(id: &str) -> Value {
    json!({"id": id, "inputs": [
        {"name": "amount", "shape": [2], "datatype": "FP64", "data": [80.0, 20.0]},
        {"name": "currency", "shape": [2], "datatype": "BYTES", "data": ["USD", "EUR"]}
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn infer_applies_the_artifacts_own_transforms_in_the_protocols_shapes() {
    let s = Setup::start().await;
    assert_eq!(s.register(false).await["stage"], "production");
    let serving = s.serving().await;

    let metadata: Value = s
        .http
        .get(format!("{}/v2/models/{}", serving.url, s.model))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(metadata["versions"], json!(["1"]), "{metadata}");
    let inputs: Vec<&str> = metadata["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(inputs, ["amount", "currency"]);

    let (status, answer) = s.infer(&serving.url, &two_rows("r-1")).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (
            &answer["model_version"],
            &answer["id"],
            &answer["parameters"]["role"]
        ),
        (&json!("1"), &json!("r-1"), &json!("production"))
    );
    // The served vectors are the training rows: z-scored amount, one-hot currency.
    let fitted: mlops_ml::model::Model =
        serde_json::from_value(artifact(&s.model, false).model).unwrap();
    let expected = fitted.scores(ndarray::array![[3.0, 0.0, 1.0], [-3.0, 1.0, 0.0]].view());
    let probability = &answer["outputs"][0];
    assert_eq!(probability["name"], "probability");
    assert_eq!(probability["shape"], json!([2]));
    let served: Vec<f64> = serde_json::from_value(probability["data"].clone()).unwrap();
    for (served, expected) in served.iter().zip(&expected) {
        // The same computation; the JSON round trip of the model may move the last bit.
        assert!((served - expected).abs() < 1e-12, "{served} vs {expected}");
    }
    assert!(served[0] > 0.99 && served[1] < 0.01, "{served:?}");
    assert_eq!(answer["outputs"][1]["data"], json!([1, 0]));

    // Each row's prediction is logged to predictions.<model>, with its raw numeric values
    // and its categorical inputs.
    let mut logged = s.logged_predictions(2).await;
    logged.sort_by(|a, b| a.request_id.cmp(&b.request_id));
    assert_eq!(logged[0].request_id, "r-1#0");
    assert_eq!(logged[0].model_version, 1);
    assert_eq!(logged[0].role, mlops_events::ServingRole::Production);
    assert_eq!(logged[0].features["amount"], 80.0);
    assert_eq!(logged[0].features["currency__USD"], 1.0);
    assert_eq!(logged[0].features["currency__EUR"], 0.0);
    assert_eq!(logged[0].output, served[0]);
    assert_eq!(logged[0].predicted_label.as_deref(), Some("1"));
    assert!(logged[0].latency_us > 0);

    // The same rows as one [rows, features] tensor.
    let (status, matrix) = s
        .infer(
            &serving.url,
            &json!({"inputs": [{"name": "input", "shape": [2, 2], "datatype": "BYTES",
                                "data": [[80.0, "USD"], [20.0, "EUR"]]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{matrix}");
    assert_eq!(matrix["outputs"][0]["data"], probability["data"]);
    // A large request (here 10,000 rows, over 256 KiB) is scored on the CPU pool, off the
    // thread that serves other connections, with the same answers.
    let rows: Vec<Value> = (0..10_000)
        .map(|i| match i {
            0 => json!([80.0, "USD"]),
            1 => json!([20.0, "EUR"]),
            _ => json!([f64::from(i) * 0.012_345_678_901_234_5, "USD"]),
        })
        .collect();
    let large = json!({"inputs": [{"name": "input", "shape": [10_000, 2], "datatype": "BYTES",
                                   "data": rows}]});
    assert!(large.to_string().len() > 256 * 1024);
    let (status, answered) = s.infer(&serving.url, &large).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(answered["outputs"][0]["shape"], json!([10_000]));
    assert_eq!(
        answered["outputs"][0]["data"].as_array().unwrap()[..2],
        probability["data"].as_array().unwrap()[..]
    );

    // The protocol's own error shape.
    let (status, refused) = s
        .infer(
            &serving.url,
            &json!({"inputs": [{"name": "balance", "shape": [1], "datatype": "FP64", "data": [1]}]}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("unknown input \"balance\""),
        "{refused}"
    );
    let missing = s
        .http
        .post(format!("{}/v2/models/nothing/infer", serving.url))
        .json(&two_rows("x"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    assert!(missing.json::<Value>().await.unwrap()["error"].is_string());
    // One request holds at most 10,000 rows (serving.max_rows_per_request).
    let rows = 10_001;
    let (status, refused) = s
        .infer(
            &serving.url,
            &json!({"inputs": [
                {"name": "amount", "shape": [rows], "datatype": "FP64", "data": vec![1.0; rows]},
                {"name": "currency", "shape": [rows], "datatype": "BYTES", "data": vec!["USD"; rows]}
            ]}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{refused}");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("at most 10000 (serving.max_rows_per_request)"),
        "{refused}"
    );
    mlops_integration_tests::assert_routes_served(&s.http, &serving.url, serving::oip::ROUTES)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_is_sticky_and_a_promotion_swaps_versions_without_a_failed_request() {
    let s = Arc::new(Setup::start().await);
    s.register(false).await;
    let serving = s.serving().await;

    // Requests without pause through everything that follows.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let load = {
        let (s, stop, failures, url) = (
            s.clone(),
            stop.clone(),
            failures.clone(),
            serving.url.clone(),
        );
        tokio::spawn(async move {
            let mut versions = BTreeSet::new();
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let (status, answer) = s.infer(&url, &two_rows(&format!("load-{sent}"))).await;
                if status == StatusCode::OK {
                    versions.insert(answer["model_version"].as_str().unwrap().to_owned());
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                sent += 1;
            }
            (versions, sent)
        })
    };

    // v2 enters canary at 10 %: ids in its share go to it, always the same ones.
    assert_eq!(s.register(true).await["stage"], "canary");
    let version_for = |id: String| {
        let s = s.clone();
        let url = serving.url.clone();
        async move { s.infer(&url, &two_rows(&id)).await.1["model_version"].clone() }
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let canary_id = loop {
        let ids: Vec<String> = (0..200).map(|i| format!("user-{i}")).collect();
        let mut found = None;
        for id in &ids {
            if version_for(id.clone()).await == "2" {
                found = Some(id.clone());
                break;
            }
        }
        if let Some(id) = found {
            break id;
        }
        assert!(Instant::now() < deadline, "no request reached the canary");
    };
    for _ in 0..5 {
        assert_eq!(version_for(canary_id.clone()).await, "2", "sticky");
    }
    let mut in_canary = 0;
    for i in 0..400 {
        if version_for(format!("share-{i}")).await == "2" {
            in_canary += 1;
        }
    }
    assert!(
        (20..=70).contains(&in_canary),
        "{in_canary} of 400 in a 10% canary"
    );

    // Promotion: every answer comes from v2, and no request failed on the way.
    let promoted = s
        .http
        .post(format!(
            "{}/v1/models/{}/versions/2/transitions",
            s.registry.url, s.model
        ))
        .json(&json!({"stage": "production", "reason": "canary won", "actor": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(promoted.status(), StatusCode::OK);
    eventually(Duration::from_secs(60), || {
        let probe = version_for("anyone".into());
        async move { probe.await == "2" }
    })
    .await
    .expect("v2 serves everyone after its promotion");
    stop.store(true, Ordering::Relaxed);
    let (versions, sent) = load.await.unwrap();
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {sent} requests");
    assert!(versions.contains("2"), "{versions:?} over {sent} requests");

    // A restarted instance serves what the registry says at once.
    serving.stop().await;
    let again = s.serving().await;
    assert_eq!(version_for_at(&s, &again.url, "after-restart").await, "2");
    let (_, answer) = s.infer(&again.url, &two_rows("after-restart")).await;
    assert_eq!(answer["parameters"]["role"], "production");
}

async fn version_for_at(s: &Setup, url: &str, id: &str) -> Value {
    s.infer(url, &two_rows(id)).await.1["model_version"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shadow_scores_production_traffic_without_answering() {
    let s = Setup::start().await;
    s.register(false).await;
    let shadow = s.register_at(true, Some(0.0)).await;
    assert_eq!(
        (&shadow["stage"], &shadow["canary_percent"]),
        (&json!("canary"), &json!(0.0))
    );
    let serving = s.serving().await;
    for i in 0..5 {
        let (status, answer) = s.infer(&serving.url, &two_rows(&format!("s-{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            (&answer["model_version"], &answer["parameters"]["role"]),
            (&json!("1"), &json!("production"))
        );
    }
    // Ten rows answered by production, the same ten scored by the shadow.
    let mut by_role: std::collections::BTreeMap<String, BTreeSet<String>> = Default::default();
    for log in s.logged_predictions(20).await {
        let role = format!("{:?}/{}", log.role, log.model_version);
        by_role.entry(role).or_default().insert(log.request_id);
    }
    assert_eq!(by_role.len(), 2, "{by_role:?}");
    assert_eq!(by_role["Production/1"], by_role["Shadow/2"]);
    assert_eq!(by_role["Shadow/2"].len(), 10);
}

/// NVIDIA's Triton HTTP client, unmodified, speaks to the serving service.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_unmodified_triton_client_reads_metadata_and_infers() {
    let s = Setup::start().await;
    s.register(false).await;
    let serving = s.serving().await;
    let output = tokio::process::Command::new(mlops_integration_tests::python())
        .env(
            "MLOPS_TOKEN",
            &mlops_integration_tests::auth::tokens().producer,
        )
        .arg(format!(
            "{}/python/oip_client.py",
            env!("CARGO_MANIFEST_DIR")
        ))
        .args([serving.url.trim_start_matches("http://"), &s.model])
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(seen["inputs"], json!(["amount", "currency"]), "{seen}");
    assert_eq!(seen["versions"], json!(["1"]), "{seen}");
    let probability: Vec<f64> = serde_json::from_value(seen["probability"].clone()).unwrap();
    assert!(probability[0] > 0.99 && probability[1] < 0.01, "{seen}");
    assert_eq!(seen["label"], json!([1, 0]), "{seen}");
    assert_eq!(seen["response"]["id"], "triton-1", "{seen}");
    assert!(
        seen["refused"].as_str().unwrap().contains("not served"),
        "{seen}"
    );
}

/// The first version's artifact retrained to need `extra`, a raw numeric feature requests of the
/// first version's shape do not carry (a retrained model with a new signature).
fn artifact_needing(model: &str, extra: &str) -> ModelArtifact {
    let mut artifact = artifact(model, false);
    artifact.model = logistic_regression(4, false);
    artifact.features.push(extra.to_owned());
    artifact
        .transforms
        .push((extra.to_owned(), FittedState::default()));
    artifact
}

/// A canary that cannot answer what production can costs the caller nothing: production
/// answers, and the canary's failure is logged against it (for the canary analysis).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_canary_that_fails_a_request_is_logged_and_production_answers() {
    let s = Setup::start().await;
    s.register(false).await;
    let body = json!({"artifact": artifact_needing(&s.model, "tenure"), "actor": "test",
                      "reason": "passed the gate", "canary_percent": 99.99});
    let url = format!("{}/v1/models/{}/versions", s.registry.url, s.model);
    let (status, canary) = mlops_integration_tests::post_json(&s.http, &url, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{canary}");
    let serving = s.serving().await;
    for i in 0..3 {
        let (status, answer) = s.infer(&serving.url, &two_rows(&format!("f-{i}"))).await;
        assert_eq!(status, StatusCode::OK, "{answer}");
        assert_eq!(
            (&answer["model_version"], &answer["parameters"]["role"]),
            (&json!("1"), &json!("production")),
            "{answer}"
        );
    }
    // Each request: one failure record for the canary, two answered rows for production.
    let mut failures = Vec::new();
    let mut answered = 0;
    for log in s.logged_predictions(9).await {
        match &log.error {
            Some(reason) => {
                assert_eq!(
                    (log.model_version, log.role),
                    (2, mlops_events::ServingRole::Canary)
                );
                assert!(log.output.is_nan());
                assert!(reason.contains("tenure"), "{reason}");
                failures.push(log.request_id);
            }
            None => {
                assert_eq!(log.model_version, 1);
                answered += 1;
            }
        }
    }
    failures.sort();
    assert_eq!(failures, ["f-0", "f-1", "f-2"]);
    assert_eq!(answered, 6);
}
