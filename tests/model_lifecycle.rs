//! Training to registration to `models.lifecycle`, end to end: a request on
//! `training.requests` becomes a snapshot, trials, a gate, a registered and signed version
//! and lifecycle events an independent subscriber (Confluent's Python client) reads; a
//! worse candidate is refused by the gate; a burst of requests becomes one run.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use axum::response::IntoResponse;

use mlops_events::{
    TrainingReason, TrainingRequest, TrainingRunResult, TrainingRunStatus, new_id, now_millis,
    topics,
};
use mlops_integration_tests::{
    TestService, assert_routes_served, platform::Platform, read_topic_until,
};
use mlops_kafka::{OwnedHeaders, Producer};
use mlops_testkit::unique;
use polars::prelude::IntoLazy;
use reqwest::StatusCode;
use serde_json::{Value, json};

/// A spec that learns the big spenders (logistic regression and a tree), gated at 0.8.
fn good_spec(model: &str, view: &str) -> String {
    format!(
        "name = \"{model}\"\nview = \"{view}\"\ntask = \"binary_classification\"\n\
         primary_metric = \"log_loss\"\n[algorithms.logistic_regression]\nalpha = [0.01, 1.0]\n\
         [algorithms.decision_tree]\nmax_depth = [2]\n[gate]\nmax_loss = 0.0\n"
    )
}

/// A spec whose only candidate is penalised into uselessness (probabilities near 0.5).
fn weak_spec(model: &str, view: &str) -> String {
    format!(
        "name = \"{model}\"\nview = \"{view}\"\ntask = \"binary_classification\"\n\
         primary_metric = \"log_loss\"\n[algorithms.logistic_regression]\nalpha = [1000000.0]\n\
         [gate]\nmax_loss = 0.0\n"
    )
}

async fn declare(p: &Platform, training: &TestService, spec: String) {
    let response = p
        .http
        .post(format!("{}/v1/models/specs", training.url))
        .header("content-type", "application/toml")
        .body(spec)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "{:?}",
        response.text().await
    );
}

/// Sends `count` training requests for `model` to `training.requests`; returns their ids.
async fn request_training(p: &Platform, model: &str, count: usize) -> Vec<String> {
    let codec = std::sync::Arc::new(mlops_integration_tests::codec(&p.registry.url));
    let kafka = mlops_kafka::KafkaConfig::with_bootstrap(p.broker.bootstrap_servers.clone());
    mlops_kafka::ensure_topics(
        &kafka,
        &[mlops_kafka::TopicSpec::new(topics::TRAINING_REQUESTS, 3)],
    )
    .await
    .unwrap();
    let producer = Producer::new(&kafka, codec).unwrap();
    let mut ids = Vec::new();
    for i in 0..count {
        let request = TrainingRequest {
            request_id: new_id(),
            model_name: model.to_owned(),
            reason: TrainingReason::Drift,
            window_start: None,
            window_end: None,
            triggering_event_id: Some(format!("drift-{i}")),
            requested_by: "monitoring".into(),
            requested_at: now_millis(),
            trace_id: None,
        };
        producer
            .send_event(
                topics::TRAINING_REQUESTS,
                Some(model.as_bytes()),
                &request,
                OwnedHeaders::new(),
            )
            .await
            .unwrap();
        ids.push(request.request_id);
    }
    ids
}

async fn get_json(p: &Platform, url: &str) -> Value {
    p.http.get(url).send().await.unwrap().json().await.unwrap()
}

fn in_progress(run: &Value) -> bool {
    matches!(run["status"].as_str(), Some("pending" | "running"))
}

/// The runs of `model`, once none is pending or running and at least `finished` are done.
async fn finished_runs(
    p: &Platform,
    training: &TestService,
    model: &str,
    finished: usize,
) -> Vec<Value> {
    let url = format!("{}/v1/training-runs?model={model}", training.url);
    mlops_testkit::until(
        &format!("runs of {model}"),
        Duration::from_secs(120),
        async || {
            let body = get_json(p, &url).await;
            let runs = body["runs"].as_array().cloned().unwrap_or_default();
            if !runs.iter().any(in_progress) && runs.len() >= finished {
                Ok(runs)
            } else {
                Err(body.to_string())
            }
        },
    )
    .await
}

async fn manual_run(p: &Platform, training: &TestService, model: &str) -> Value {
    let response = p
        .http
        .post(format!("{}/v1/training-runs", training.url))
        .json(&json!({"model": model}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    let accepted: Value = response.json().await.unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    let url = format!("{}/v1/training-runs/{id}", training.url);
    mlops_testkit::until(&format!("run {id}"), Duration::from_secs(120), async || {
        let run = get_json(p, &url).await;
        if in_progress(&run) {
            Err(run.to_string())
        } else {
            Ok(run)
        }
    })
    .await
}

/// The `TrainingRunResult` of `run_id` on `training.runs` (on a shared broker the topic
/// also holds other tests' results, framed with other registries' schema ids: only the
/// records that carry this run's id are decoded).
async fn run_result(p: &Platform, run_id: &str) -> TrainingRunResult {
    let codec = mlops_integration_tests::codec(&p.registry.url);
    let ours = |m: &rdkafka::message::OwnedMessage| {
        rdkafka::Message::payload(m)
            .is_some_and(|b| b.windows(run_id.len()).any(|w| w == run_id.as_bytes()))
    };
    let messages = read_topic_until(
        &p.broker.bootstrap_servers,
        topics::TRAINING_RUNS,
        |messages| messages.iter().any(ours),
    )
    .await;
    let message = messages.iter().find(|m| ours(m)).unwrap();
    codec
        .decode(rdkafka::Message::payload(message).unwrap())
        .await
        .unwrap()
}

/// A drift request on `training.requests`, trained, gated, registered and announced.
async fn a_drift_request_becomes_a_registered_version_on(broker: mlops_testkit::TestBroker) {
    let kind = broker.kind;
    let p = Platform::start_on(broker).await;
    let view = p.labelled_spend().await;
    let training = p.training(200).await;
    let model = unique("big-spender");
    declare(&p, &training, good_spec(&model, &view)).await;
    let requests = request_training(&p, &model, 1).await;

    let runs = finished_runs(&p, &training, &model, 1).await;
    assert_eq!(runs.len(), 1, "{kind}: {runs:?}");
    let run = &runs[0];
    assert_eq!(run["status"], "succeeded", "{kind}: {run}");
    assert_eq!(run["request_ids"], json!(requests), "{run}");
    assert_eq!(run["registered_version"], 1, "{run}");
    assert_eq!(run["gate"]["passed"], true, "{run}");
    assert_eq!(run["trials"].as_array().unwrap().len(), 3, "{run}");
    assert!(!run["code_version"].as_str().unwrap().is_empty(), "{run}");
    for timing in ["snapshot", "search", "register", "total"] {
        assert!(run["timings_ms"][timing].is_i64(), "{timing}: {run}");
    }
    assert_eq!(run["spec"]["name"], model.as_str(), "{run}");

    // The registry holds it in production, with its lineage back to the drift event.
    let registry = &p.registry.url;
    let summary: Value = p
        .http
        .get(format!("{registry}/v1/models/{model}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(summary["production"], 1, "{summary}");
    let lineage: Value = p
        .http
        .get(format!("{registry}/v1/models/{model}/versions/1/lineage"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(lineage["training_run_id"], run["id"], "{lineage}");
    assert_eq!(lineage["snapshot_id"], run["snapshot_id"], "{lineage}");
    assert_eq!(lineage["feature_view"], view.as_str(), "{lineage}");
    assert_eq!(
        lineage["trigger"]["event_ids"],
        json!(["drift-0"]),
        "{lineage}"
    );
    assert_eq!(
        lineage["trigger"]["request_ids"],
        json!(requests),
        "{lineage}"
    );
    assert_eq!(lineage["code_version"], run["code_version"], "{lineage}");
    assert!(
        !lineage["schema_ids"].as_array().unwrap().is_empty(),
        "{lineage}"
    );

    // An independent subscriber (Confluent's Python client) sees the registration and the
    // move to production: the README's example on the embedded broker (one registry wrote
    // the topic), the keyed variant on the shared Apache Kafka.
    let seen = match kind {
        mlops_testkit::BrokerKind::Tansu => readme_subscriber(&p, &model, 2).await,
        mlops_testkit::BrokerKind::ApacheKafka => keyed_subscriber(&p, &model, 2).await,
    };
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        (&seen[0]["stage"], &seen[0]["sequence"]),
        (&json!("candidate"), &json!(1))
    );
    assert_eq!(
        (&seen[1]["stage"], &seen[1]["sequence"]),
        (&json!("production"), &json!(2))
    );
    assert_eq!(seen[1]["version"], 1);

    // The run's result is on training.runs.
    let result = run_result(&p, run["id"].as_str().unwrap()).await;
    assert_eq!(result.status, TrainingRunStatus::Succeeded);
    assert_eq!(result.registered_version, Some(1));
    assert_eq!(result.request_ids, requests);
    assert!(result.metrics.contains_key("log_loss"), "{result:?}");

    // The training service's route table lists routes it serves.
    assert_routes_served(&p.http, &training.url, training::api::ROUTES).await;
    assert_routes_served(&p.http, registry, registry::models::api::ROUTES).await;
    training.stop().await;
}

/// The README's subscriber example, verbatim, until it printed `model`'s event `last`.
async fn readme_subscriber(p: &Platform, model: &str, last: i64) -> Vec<Value> {
    use tokio::io::AsyncBufReadExt;
    let readme = include_str!("../README.md");
    let section = &readme[readme
        .find("### For services subscribing to model updates")
        .expect("the README's subscriber section")..];
    let start = section.find("```python\n").expect("its example") + "```python\n".len();
    let code = &section[start..start + section[start..].find("```").unwrap()];
    let mut child = tokio::process::Command::new(mlops_integration_tests::python())
        .args(["-c", code])
        .env("KAFKA_BOOTSTRAP_SERVERS", &p.broker.bootstrap_servers)
        .env("SCHEMA_REGISTRY_URL", &p.registry.url)
        .env("MLOPS_TOKEN", &mlops_integration_tests::auth::tokens().sre)
        .env("GROUP", unique("readme"))
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut seen = Vec::new();
    while seen
        .last()
        .is_none_or(|e: &Value| e["sequence"].as_i64() < Some(last))
    {
        let line = tokio::time::timeout(Duration::from_secs(120), lines.next_line())
            .await
            .expect("the README's subscriber printed within two minutes")
            .unwrap()
            .expect("the README's subscriber is still running");
        let event: Value = serde_json::from_str(&line).unwrap();
        if event["model_name"] == model {
            seen.push(event);
        }
    }
    child.kill().await.unwrap();
    seen
}

/// `tests/python/lifecycle_subscriber.py`: the README's loop for one model, by its key.
async fn keyed_subscriber(p: &Platform, model: &str, last: i64) -> Vec<Value> {
    let dir = env!("CARGO_MANIFEST_DIR");
    let output = tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(mlops_integration_tests::python())
            .arg(format!("{dir}/python/lifecycle_subscriber.py"))
            .env("MLOPS_TOKEN", &mlops_integration_tests::auth::tokens().sre)
            .args([
                &p.broker.bootstrap_servers,
                &p.registry.url,
                &unique("subscriber"),
                model,
                &last.to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the subscriber saw the events within two minutes")
    .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drift_request_becomes_a_registered_version_on_the_embedded_broker() {
    a_drift_request_becomes_a_registered_version_on(mlops_testkit::tansu().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_drift_request_becomes_a_registered_version_on_apache_kafka() {
    a_drift_request_becomes_a_registered_version_on(mlops_testkit::apache_kafka()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_candidate_worse_than_production_is_refused_and_nothing_is_registered() {
    let p = Platform::start().await;
    let view = p.labelled_spend().await;
    let training = p.training(0).await;
    let model = unique("big-spender");
    declare(&p, &training, good_spec(&model, &view)).await;
    let first = manual_run(&p, &training, &model).await;
    assert_eq!(first["status"], "succeeded", "{first}");
    assert_eq!(first["registered_version"], 1, "{first}");

    declare(&p, &training, weak_spec(&model, &view)).await;
    let second = manual_run(&p, &training, &model).await;
    assert_eq!(second["status"], "rejected_by_gate", "{second}");
    assert_eq!(second["registered_version"], Value::Null, "{second}");
    assert_eq!(second["gate"]["production_version"], 1, "{second}");
    let (candidate, production) = (
        second["gate"]["candidate"].as_f64().unwrap(),
        second["gate"]["production"].as_f64().unwrap(),
    );
    assert!(
        candidate > production,
        "log loss {candidate} vs {production}: {second}"
    );
    let reason = second["reason"].as_str().unwrap();
    assert!(reason.contains("trails production's"), "{reason}");

    let versions: Value = p
        .http
        .get(format!("{}/v1/models/{model}/versions", p.registry.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        versions["versions"].as_array().unwrap().len(),
        1,
        "{versions}"
    );
    let result = run_result(&p, second["id"].as_str().unwrap()).await;
    assert_eq!(result.status, TrainingRunStatus::RejectedByGate);
    assert!(result.reason.unwrap().contains("trails production's"));
    assert_eq!(result.registered_version, None);
    training.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_burst_of_fifty_drift_requests_is_one_run_listing_them_all() {
    let p = Platform::start().await;
    let view = p.labelled_spend().await;
    let model = unique("big-spender");
    // This model's spec comes from the directory the service reads at start.
    let specs = mlops_testkit::temp_dir();
    std::fs::write(
        specs.path().join(format!("{model}.toml")),
        good_spec(&model, &view),
    )
    .unwrap();
    let mut config = p.training_config(3_000);
    config.training.specs_dir = Some(specs.path().to_path_buf());
    let training =
        TestService::run(|listener, cancel| training::run(config, listener, cancel)).await;
    let requests = request_training(&p, &model, 50).await;
    let runs = finished_runs(&p, &training, &model, 1).await;
    assert_eq!(runs.len(), 1, "{runs:?}");
    let mut listed: Vec<String> = serde_json::from_value(runs[0]["request_ids"].clone()).unwrap();
    let mut sent = requests.clone();
    listed.sort();
    sent.sort();
    assert_eq!(listed, sent);
    assert_eq!(runs[0]["status"], "succeeded", "{}", runs[0]);
    let result = run_result(&p, runs[0]["id"].as_str().unwrap()).await;
    assert_eq!(result.request_ids.len(), 50);
    // Every trial records its folds (the holdout is one).
    let trial = &runs[0]["trials"][0];
    assert_eq!(trial["folds"].as_array().unwrap().len(), 1, "{trial}");
    assert_eq!(trial["folds"][0], trial["metrics"], "{trial}");
}

/// No training/serving skew: the vector serving feeds the model for an entity is the
/// training-set row of that entity's event, value for value.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_served_input_vector_is_the_training_row_of_the_same_event() {
    let p = Platform::start().await;
    let view = p.labelled_spend().await;
    let training = p.training(0).await;
    let model = unique("big-spender");
    declare(&p, &training, good_spec(&model, &view)).await;
    let run = manual_run(&p, &training, &model).await;
    assert_eq!(run["registered_version"], 1, "{run}");

    let mut config = serving::default_config();
    config.common.kafka.bootstrap_servers = p.broker.bootstrap_servers.clone();
    config.common.schema_registry.url = p.registry.url.clone();
    config.serving.registry_url = p.registry.url.clone();
    config.serving.feature_url = p.feature.url.clone();
    config.serving.feature_timeout_ms = 2_000;
    mlops_integration_tests::auth::secure(&mut config.common);
    let serving = TestService::run(|listener, cancel| serving::run(config, listener, cancel)).await;
    let predict = |body: Value| {
        let http = p.http.clone();
        let url = format!("{}/v1/models/{model}:predict", serving.url);
        async move {
            let response = http.post(url).json(&body).send().await.unwrap();
            let status = response.status();
            (status, response.json::<Value>().await.unwrap())
        }
    };
    let served = mlops_testkit::until(
        "serving answers for c38",
        Duration::from_secs(30),
        async || match predict(json!({"entity_id": "c38"})).await {
            (StatusCode::OK, body) => Ok(body),
            (status, body) => Err(format!("{status} {body}")),
        },
    )
    .await;
    assert_eq!(
        (&served["version"], &served["role"]),
        (&json!(1), &json!("production"))
    );
    assert!(
        served["prediction"]["probability"].as_f64().unwrap() > 0.5,
        "{served}"
    );

    let frame = p.snapshot_data(run["snapshot_id"].as_str().unwrap()).await;
    let rows = frame
        .clone()
        .lazy()
        .filter(polars::prelude::col("entity_id").eq(polars::prelude::lit("c38")))
        .collect()
        .unwrap();
    assert_eq!(rows.height(), 1);
    let inputs = served["inputs"].as_object().unwrap();
    assert!(!inputs.is_empty());
    for (name, value) in inputs {
        let column = rows
            .column(name)
            .unwrap()
            .cast(&polars::prelude::DataType::Float64)
            .unwrap();
        let trained = column.f64().unwrap().get(0).unwrap();
        let served = value.as_f64().unwrap();
        assert!(
            (trained - served).abs() < 1e-9,
            "{name}: trained on {trained}, served {served}"
        );
    }
    // The same raw values given by name give the same answer.
    let online: Value = p
        .http
        .get(format!(
            "{}/v1/feature-views/{view}/entities/c38",
            p.feature.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (status, by_name) = predict(json!({"features": online["features"]})).await;
    assert_eq!(status, StatusCode::OK, "{by_name}");
    assert_eq!(by_name["inputs"], served["inputs"]);
    assert_eq!(by_name["prediction"], served["prediction"]);
    let (status, unknown) = predict(json!({"entity_id": "nobody"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{unknown}");
}

/// A gateway in front of the feature service that answers its first `refusals` training-set
/// requests as a feature service whose view is still catching up does (503
/// `not_caught_up`), and passes everything else through. Returns its URL and how many
/// training-set requests it has seen.
async fn catching_up_at_first(
    feature_url: String,
    refusals: usize,
) -> (String, Arc<AtomicUsize>, tokio_util::sync::DropGuard) {
    let refusal = json!({"error": "not_caught_up",
                         "message": "feature view still 240 records behind"});
    gateway(
        feature_url,
        |method, path| method == axum::http::Method::POST && path == "/v1/training-sets",
        refusals,
        Fault::Refuse(StatusCode::SERVICE_UNAVAILABLE, refusal),
    )
    .await
}

/// What a [`gateway`] does to the first requests it intercepts.
#[derive(Clone)]
enum Fault {
    /// Answers this, without passing the request on.
    Refuse(StatusCode, Value),
    /// Passes the request on, then loses the answer: 504, as a proxy whose upstream
    /// answered too late.
    LoseAnswer,
}

/// A gateway in front of `upstream_url`: the first `faults` requests that `intercept`
/// picks meet `fault`, every other request passes through. Returns its URL, how many
/// requests it picked, and a guard that stops it.
async fn gateway(
    upstream_url: String,
    intercept: fn(&axum::http::Method, &str) -> bool,
    faults: usize,
    fault: Fault,
) -> (String, Arc<AtomicUsize>, tokio_util::sync::DropGuard) {
    let seen = Arc::new(AtomicUsize::new(0));
    let counter = seen.clone();
    let upstream = reqwest::Client::new();
    let pass = move |method: axum::http::Method,
                     uri: axum::http::Uri,
                     headers: axum::http::HeaderMap,
                     body: axum::body::Bytes| {
        let (counter, upstream, upstream_url, fault) = (
            counter.clone(),
            upstream.clone(),
            upstream_url.clone(),
            fault.clone(),
        );
        async move {
            let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
            let faulty =
                intercept(&method, &path) && counter.fetch_add(1, Ordering::SeqCst) < faults;
            if let (true, Fault::Refuse(status, body)) = (faulty, &fault) {
                return (*status, body.to_string()).into_response();
            }
            let mut request = upstream.request(method, format!("{upstream_url}{path}"));
            for (name, value) in &headers {
                if name != axum::http::header::HOST && name != axum::http::header::CONTENT_LENGTH {
                    request = request.header(name, value);
                }
            }
            let answer = request.body(body).send().await.unwrap();
            let status = answer.status();
            let content_type = answer.headers().get("content-type").cloned();
            let bytes = answer.bytes().await.unwrap();
            if faulty {
                return (StatusCode::GATEWAY_TIMEOUT, "upstream answered too late").into_response();
            }
            let mut response = (status, bytes).into_response();
            if let Some(content_type) = content_type {
                response.headers_mut().insert("content-type", content_type);
            }
            response
        }
    };
    let gateway = axum::Router::new().fallback(pass);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let cancel = tokio_util::sync::CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        axum::serve(listener, gateway)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await
    });
    (url, seen, cancel.drop_guard())
}

/// A feature service that is not ready (its view catching up after a restart, say) does
/// not fail the run: it waits, is tried again with its request, and trains once the
/// training set is built — saying why it waited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_waits_out_a_feature_service_still_catching_up() {
    let p = Platform::start().await;
    let view = p.labelled_spend().await;
    let (gateway, seen, _gateway) = catching_up_at_first(p.feature.url.clone(), 2).await;
    let mut config = p.training_config(0);
    config.training.feature_url = gateway;
    let training =
        TestService::run(|listener, cancel| training::run(config, listener, cancel)).await;
    let model = unique("patient");
    declare(&p, &training, good_spec(&model, &view)).await;
    let run = manual_run(&p, &training, &model).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["attempts"], 3,
        "two refusals, then the training set: {run}"
    );
    assert!(
        run["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("503") && e.contains("not_caught_up")),
        "{run}"
    );
    assert_eq!(run["registered_version"], 1, "{run}");
    assert_eq!(seen.load(Ordering::SeqCst), 3);
    let metrics = mlops_integration_tests::metrics(&p.http, &training.url).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mlops_training_run_retries_total")
                && l.contains(&model)
                && l.ends_with(" 2")),
        "{metrics}"
    );
    training.stop().await;
}

/// PostgreSQL down under a running training service: its API answers 503
/// `database_unavailable` with `Retry-After` at once (not a 500, not held), and once the
/// database is back the same process answers again, its specs kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_answers_503_and_recovers_without_a_restart() {
    let postgres = mlops_integration_tests::PrivatePostgres::start();
    let p = Platform::start().await;
    let mut config = p.training_config(0);
    config.common.database.url = Some(postgres.url.clone());
    let training =
        TestService::run(|listener, cancel| training::run(config, listener, cancel)).await;
    let model = unique("outage");
    declare(&p, &training, good_spec(&model, "spend")).await;
    let specs = format!("{}/v1/models/specs", training.url);

    postgres.stop();
    let asked = std::time::Instant::now();
    let response = p.http.get(&specs).send().await.expect("answered");
    let waited = asked.elapsed();
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(waited < Duration::from_secs(10), "held {waited:?}");

    postgres.resume();
    mlops_testkit::until("specs read again", Duration::from_secs(60), async || {
        let response = p.http.get(&specs).send().await.map_err(|e| e.to_string())?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or_default();
        let names: Vec<&str> = body["specs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s["name"].as_str())
            .collect();
        (status == StatusCode::OK && names.contains(&model.as_str()))
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    training.stop().await;
}

/// A registration whose answer is lost (the registry registered the version, a proxy in
/// between answered 504) is sent again with the run's next start: the registry answers
/// with the version the run made, so the run succeeds with it and the model has one
/// version, not two.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_registration_answer_was_lost_registers_one_version() {
    let p = Platform::start().await;
    let view = p.labelled_spend().await;
    let (gateway, seen, _gateway) = gateway(
        p.registry.url.clone(),
        |method, path| method == axum::http::Method::POST && path.ends_with("/versions"),
        1,
        Fault::LoseAnswer,
    )
    .await;
    let mut config = p.training_config(0);
    config.training.registry_url = gateway;
    let training =
        TestService::run(|listener, cancel| training::run(config, listener, cancel)).await;
    let model = unique("unanswered");
    declare(&p, &training, good_spec(&model, &view)).await;
    let run = manual_run(&p, &training, &model).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(
        run["attempts"], 2,
        "the lost answer, then the registry's: {run}"
    );
    assert!(
        run["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("504")),
        "{run}"
    );
    assert_eq!(run["registered_version"], 1, "{run}");
    assert_eq!(
        seen.load(Ordering::SeqCst),
        2,
        "two registrations were sent"
    );
    let versions: Value = p
        .http
        .get(format!("{}/v1/models/{model}/versions", p.registry.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let versions = versions["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 1, "one run, one version: {versions:?}");
    assert_eq!(
        versions[0]["lineage"]["training_run_id"], run["id"],
        "{versions:?}"
    );
    training.stop().await;
}

/// Residency: a training set carries the region of the feature service that built it; a
/// training service of another region refuses it and fails the run saying why, while one
/// of the same region trains on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_training_service_of_another_region_refuses_the_training_set() {
    let p = Platform::start_in_region("eu").await;
    let view = p.labelled_spend().await;
    for (region, succeeds) in [("ae", false), ("eu", true)] {
        let mut config = p.training_config(0);
        config.common.region = Some(region.to_owned());
        let training =
            TestService::run(|listener, cancel| training::run(config, listener, cancel)).await;
        let model = unique("resident");
        declare(&p, &training, good_spec(&model, &view)).await;
        let run = manual_run(&p, &training, &model).await;
        if succeeds {
            assert_eq!(run["status"], "succeeded", "{run}");
        } else {
            assert_eq!(run["status"], "failed", "{run}");
            let reason = run["reason"].as_str().unwrap_or_default();
            assert!(
                reason.contains("region \"eu\"") && reason.contains("region \"ae\""),
                "{run}"
            );
        }
        training.stop().await;
    }
}
