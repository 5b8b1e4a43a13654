//! The model registry end to end: versions registered with signed artifacts, the stage
//! rules, history that answers "what served when", rollback, lineage, tampered artifacts
//! refused, canary verdicts from the monitor, and every change on `models.lifecycle`.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;

use mlops_events::{
    CanaryDecision, CanaryVerdict, ModelLifecycleEvent, ModelStage, now_millis, topics,
};
use mlops_integration_tests::{TestRegistry, read_topic_until};
use mlops_kafka::{OwnedHeaders, Producer};
use mlops_testkit::{TestBroker, unique};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

struct Registry {
    _broker: Option<TestBroker>,
    bootstrap: String,
    service: TestRegistry,
    http: Client,
}

impl Registry {
    /// On a fresh embedded broker, with SQLite or (`postgres`) a fresh PostgreSQL database.
    async fn start(postgres: bool) -> Self {
        let database = if postgres {
            Some(mlops_integration_tests::fresh_postgres_database().await)
        } else {
            None
        };
        Self::start_on(database).await
    }

    /// On a fresh embedded broker, with the database at `database` (SQLite when `None`).
    async fn start_on(database: Option<String>) -> Self {
        mlops_testkit::init_logs();
        let broker = mlops_testkit::tansu().await;
        let service = TestRegistry::start(&broker.bootstrap_servers, database).await;
        Self {
            bootstrap: broker.bootstrap_servers.clone(),
            _broker: Some(broker),
            service,
            http: mlops_integration_tests::client(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.service.url)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        mlops_integration_tests::get_json(&self.http, &self.url(path)).await
    }

    async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        mlops_integration_tests::post_json(&self.http, &self.url(path), body).await
    }

    /// Registers a version of `model` whose artifact carries `weight`; returns its number.
    async fn register(&self, model: &str, weight: f64) -> i64 {
        let (status, body) = self
            .post(
                &format!("/v1/models/{model}/versions"),
                &json!({
                    "artifact": artifact(model, weight),
                    "lineage": {"training_run_id": format!("run-{weight}"), "snapshot_id": "snap",
                                "feature_view": "spend", "feature_view_version": 1,
                                "code_version": "abc123", "request_ids": ["req-1"],
                                "triggering_event_ids": ["drift-7"]},
                    "reason": "passed the gate", "actor": "training",
                }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["version"].as_i64().unwrap()
    }

    async fn transition(&self, model: &str, version: i64, stage: &str) -> (StatusCode, Value) {
        let mut body = json!({"stage": stage, "reason": format!("to {stage}"), "actor": "alice"});
        if stage == "canary" {
            body["canary_percent"] = json!(25.0);
        }
        self.post(
            &format!("/v1/models/{model}/versions/{version}/transitions"),
            &body,
        )
        .await
    }

    /// Every lifecycle event of `model` until `count` arrived, in order.
    async fn lifecycle(&self, model: &str, count: usize) -> Vec<ModelLifecycleEvent> {
        lifecycle_events(&self.bootstrap, &self.service.url, model, count).await
    }
}

/// The lifecycle events of `model` on the broker at `bootstrap` until `count` arrived.
async fn lifecycle_events(
    bootstrap: &str,
    registry: &str,
    model: &str,
    count: usize,
) -> Vec<ModelLifecycleEvent> {
    let codec = mlops_integration_tests::codec(registry);
    let mine =
        |m: &rdkafka::message::OwnedMessage| rdkafka::Message::key(m) == Some(model.as_bytes());
    let messages = read_topic_until(bootstrap, topics::MODELS_LIFECYCLE, |messages| {
        messages.iter().filter(|m| mine(m)).count() >= count
    })
    .await;
    let mut events = Vec::new();
    for message in messages.iter().filter(|m| mine(m)) {
        let payload = rdkafka::Message::payload(message).unwrap();
        events.push(codec.decode::<ModelLifecycleEvent>(payload).await.unwrap());
    }
    events
}

fn artifact(model: &str, weight: f64) -> Value {
    json!({
        "model_name": model, "algorithm": "logistic_regression",
        "model": {"weights": [weight]}, "features": ["amount"],
        "transforms": [["amount", {}]], "view": "spend", "view_version": 1,
        "snapshot_id": "snap", "metrics": {"accuracy": weight}, "created_at": now_millis(),
    })
}

/// Waits for the wall clock to pass `millis`, so the next change has a later timestamp.
fn after(millis: i64) {
    while now_millis() <= millis {
        std::hint::spin_loop();
    }
}

fn stages(history: &Value) -> Vec<(i64, Option<String>, String)> {
    history["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["version"].as_i64().unwrap(),
                t["from"].as_str().map(str::to_owned),
                t["to"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn millis_of(rfc3339: &Value) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339.as_str().unwrap())
        .unwrap()
        .timestamp_millis()
}

async fn history_across_promote_rollback_and_promote_again(postgres: bool) {
    let r = Registry::start(postgres).await;
    let model = unique("fraud");
    // v1 is the first to pass the gate: straight to production. v2: canary at 10%.
    assert_eq!(r.register(&model, 0.8).await, 1);
    assert_eq!(r.register(&model, 0.9).await, 2);
    let (_, summary) = r.get(&format!("/v1/models/{model}")).await;
    assert_eq!(summary["production"], 1, "{summary}");
    assert_eq!(summary["canary"]["version"], 2, "{summary}");
    assert_eq!(summary["canary"]["percent"], 10.0, "{summary}");
    let (_, history) = r.get(&format!("/v1/models/{model}/history")).await;
    let t_first = millis_of(&history["transitions"].as_array().unwrap().last().unwrap()["at"]);

    after(t_first);
    let (status, promoted) = r.transition(&model, 2, "production").await;
    assert_eq!(status, StatusCode::OK, "{promoted}");
    let t_promoted = millis_of(&promoted["transitions"][0]["at"]);
    after(t_promoted);
    let (status, rolled) = r
        .post(
            &format!("/v1/models/{model}:rollback"),
            &json!({"reason": "error rate doubled", "actor": "bob"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rolled}");
    assert_eq!(rolled["production"], 1, "{rolled}");
    let t_rolled_back = millis_of(&rolled["transitions"][0]["at"]);
    after(t_rolled_back);
    assert_eq!(r.register(&model, 0.95).await, 3);
    let (status, again) = r.transition(&model, 3, "production").await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let t_again = millis_of(&again["transitions"][0]["at"]);

    let (status, history) = r.get(&format!("/v1/models/{model}/history")).await;
    assert_eq!(status, StatusCode::OK);
    let c = |s: &str| Some(s.to_owned());
    assert_eq!(
        stages(&history),
        [
            (1, None, "candidate".into()),
            (1, c("candidate"), "production".into()),
            (2, None, "candidate".into()),
            (2, c("candidate"), "canary".into()),
            (2, c("canary"), "production".into()),
            (1, c("production"), "archived".into()),
            (1, c("archived"), "production".into()),
            (2, c("production"), "archived".into()),
            (3, None, "candidate".into()),
            (3, c("candidate"), "canary".into()),
            (3, c("canary"), "production".into()),
            (1, c("production"), "archived".into()),
        ]
    );
    let transitions = history["transitions"].as_array().unwrap();
    for t in transitions {
        for field in ["version", "from", "to", "at", "reason", "actor", "event_id"] {
            assert!(t.get(field).is_some(), "{field} missing in {t}");
        }
    }
    assert_eq!(transitions[6]["reason"], "error rate doubled");
    assert_eq!(transitions[6]["actor"], "bob");
    assert!(
        transitions[5]["reason"]
            .as_str()
            .unwrap()
            .contains("replaced in production by version 2"),
        "{}",
        transitions[5]
    );

    let at = |millis: i64| {
        let text = chrono::DateTime::from_timestamp_millis(millis)
            .unwrap()
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        format!("/v1/models/{model}/history?at={}", text.replace('+', "%2B"))
    };
    for (instant, production, canary) in [
        (t_first - 60_000, Value::Null, Value::Null),
        (t_first, json!(1), json!(2)),
        (t_promoted, json!(2), Value::Null),
        (t_rolled_back, json!(1), Value::Null),
        (t_again, json!(3), Value::Null),
    ] {
        let (status, state) = r.get(&at(instant)).await;
        assert_eq!(status, StatusCode::OK, "{state}");
        assert_eq!(state["production"], production, "at {instant}: {state}");
        assert_eq!(state["canary"]["version"], canary, "at {instant}: {state}");
    }
    let (status, bad) = r
        .get(&format!("/v1/models/{model}/history?at=yesterday"))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(bad["error"]["fields"][0]["field"], "at", "{bad}");

    // Every change reached models.lifecycle after its commit, numbered 1, 2, 3... per model.
    let events = r.lifecycle(&model, transitions.len()).await;
    let sequences: Vec<i64> = events.iter().map(|e| e.sequence).collect();
    assert_eq!(
        sequences,
        (1..=transitions.len() as i64).collect::<Vec<_>>()
    );
    assert_eq!(events[4].stage, ModelStage::Production);
    assert_eq!(events[4].previous_stage, Some(ModelStage::Canary));
    assert_eq!(events[4].version, 2);
    assert_eq!(
        events[0].lineage.training_run_id.as_deref(),
        Some("run-0.8")
    );
    assert_eq!(events[0].metrics["accuracy"], 0.8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_answers_which_version_served_when_on_sqlite() {
    history_across_promote_rollback_and_promote_again(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn history_answers_which_version_served_when_on_postgres() {
    history_across_promote_rollback_and_promote_again(true).await;
}

/// A training run whose registration answer was lost (a proxy's 504, the trainer killed
/// after registering) sends it again: the run gets one version, however many times and
/// however concurrently it asks; another run gets the next version.
async fn a_training_run_registers_one_version_however_often_it_asks(postgres: bool) {
    let r = Registry::start(postgres).await;
    let model = unique("retried");
    let body = json!({
        "artifact": artifact(&model, 0.8),
        "lineage": {"training_run_id": "run-lost-answer", "snapshot_id": "snap"},
        "reason": "passed the gate", "actor": "training",
    });
    let path = format!("/v1/models/{model}/versions");
    let answers = futures::future::join_all((0..4).map(|_| r.post(&path, &body))).await;
    let created = answers
        .iter()
        .filter(|(status, _)| *status == StatusCode::CREATED)
        .count();
    assert_eq!(
        created, 1,
        "exactly one registration makes a version: {answers:?}"
    );
    for (status, answer) in &answers {
        assert!(
            *status == StatusCode::CREATED || *status == StatusCode::OK,
            "{status} {answer}"
        );
        assert_eq!(
            answer["version"], 1,
            "every answer names the run's version: {answer}"
        );
        assert_eq!(
            answer["lineage"]["training_run_id"], "run-lost-answer",
            "{answer}"
        );
    }
    let (_, history) = r.get(&format!("/v1/models/{model}/history")).await;
    let registrations = history["transitions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["from"].is_null())
        .count();
    assert_eq!(registrations, 1, "{history}");
    // Another run is another version.
    assert_eq!(r.register(&model, 0.9).await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_model_name_that_cannot_name_its_topics_is_refused() {
    let r = Registry::start(false).await;
    let model = format!("Fraud.{}", unique("v"));
    let (status, body) = r
        .post(
            &format!("/v1/models/{model}/versions"),
            &json!({"artifact": artifact(&model, 0.8), "reason": "by hand", "actor": "alice"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "name", "{body}");
    let reason = body["error"]["fields"][0]["reason"].as_str().unwrap();
    assert!(reason.contains("must start with a-z"), "{reason}");
    let (status, _) = r.get(&format!("/v1/models/{model}/history")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "nothing was registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_training_run_registers_one_version_on_sqlite() {
    a_training_run_registers_one_version_however_often_it_asks(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_training_run_registers_one_version_on_postgres() {
    a_training_run_registers_one_version_however_often_it_asks(true).await;
}

/// PostgreSQL down under a running registry: the model API answers 503
/// `database_unavailable` with `Retry-After` within seconds (not a 500, not held), and once
/// the database is back the same process reads and registers again, nothing lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_fast_and_recovers_without_a_restart() {
    let postgres = mlops_integration_tests::PrivatePostgres::start();
    let r = Registry::start_on(Some(postgres.url.clone())).await;
    let model = unique("fraud");
    assert_eq!(r.register(&model, 0.8).await, 1);

    postgres.stop();
    for (method, path) in [
        (reqwest::Method::GET, format!("/v1/models/{model}")),
        (
            reqwest::Method::POST,
            format!("/v1/models/{model}/versions"),
        ),
        // The audit trail, kept in the same database.
        (reqwest::Method::GET, "/v1/audit".to_owned()),
    ] {
        let asked = std::time::Instant::now();
        let mut request = r.http.request(method.clone(), r.url(&path));
        if method == reqwest::Method::POST {
            request = request.json(&json!({"artifact": artifact(&model, 0.9)}));
        }
        let response = request.send().await.expect("answered");
        let waited = asked.elapsed();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            body["error"]["code"], "database_unavailable",
            "{path}: {body}"
        );
        assert!(
            waited < std::time::Duration::from_secs(10),
            "{path} held {waited:?} before answering"
        );
    }

    postgres.resume();
    mlops_testkit::until(
        "read again",
        std::time::Duration::from_secs(60),
        async || {
            let (status, body) = r.get(&format!("/v1/models/{model}")).await;
            (status == StatusCode::OK)
                .then_some(())
                .ok_or(format!("{status} {body}"))
        },
    )
    .await;
    assert_eq!(r.register(&model, 0.9).await, 2, "version 1 was kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn illegal_transitions_are_refused_naming_the_rule() {
    let r = Registry::start(false).await;
    let model = unique("fraud");
    r.register(&model, 0.8).await;
    r.register(&model, 0.9).await;
    r.register(&model, 0.7).await;
    for (version, stage, status, words) in [
        (
            1,
            "candidate",
            StatusCode::CONFLICT,
            "nothing returns to candidate",
        ),
        (1, "canary", StatusCode::CONFLICT, "cannot become a canary"),
        // v3 superseded v2 in canary when it was registered.
        (2, "canary", StatusCode::CONFLICT, "one canary at a time"),
        (
            1,
            "production",
            StatusCode::CONFLICT,
            "already in production",
        ),
        (9, "archived", StatusCode::NOT_FOUND, "has no version 9"),
    ] {
        let (got, body) = r.transition(&model, version, stage).await;
        assert_eq!(got, status, "{version} → {stage}: {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains(words), "{version} → {stage}: {message}");
    }
    let (status, body) = r
        .post(
            &format!("/v1/models/{model}/versions/2/transitions"),
            &json!({"stage": "live", "reason": "x", "actor": "y"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"][0]["field"], "stage", "{body}");
    let (status, body) = r
        .post(
            &format!("/v1/models/{model}/versions/2/transitions"),
            &json!({"stage": "canary", "canary_percent": 150, "reason": "x", "actor": "y"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body["error"]["fields"][0]["field"], "canary_percent",
        "{body}"
    );
    let (status, body) = r
        .post(
            &format!("/v1/models/{model}/versions/2/transitions"),
            &json!({"stage": "archived", "actor": "y"}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["fields"][0]["field"], "reason", "{body}");
    // A model that never had another production version has nothing to roll back to.
    let (status, body) = r
        .post(&format!("/v1/models/{model}:rollback"), &json!({}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("nothing to roll back to")
    );
    let (status, _) = r.get("/v1/models/no_such_model").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // Nothing refused left a trace: three registrations, their deployment, no more.
    let (_, history) = r.get(&format!("/v1/models/{model}/history")).await;
    assert_eq!(
        history["transitions"].as_array().unwrap().len(),
        7,
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stored_artifact_with_one_flipped_byte_is_refused_naming_the_digest() {
    let r = Registry::start(false).await;
    let model = unique("fraud");
    r.register(&model, 0.8).await;
    let (_, version) = r.get(&format!("/v1/models/{model}/versions/1")).await;
    let sha256 = version["sha256"].as_str().unwrap().to_owned();
    let uri = version["artifact_uri"].as_str().unwrap().to_owned();
    assert!(uri.ends_with(&format!("{sha256}.mlart")), "{uri}");

    // Served intact, it opens with the key the registry publishes.
    let download = r
        .http
        .get(r.url(&format!("/v1/models/{model}/versions/1/artifact")))
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), StatusCode::OK);
    let bytes = download.bytes().await.unwrap();
    let (_, key) = r.get("/v1/signing-key").await;
    let key = hex::decode(key["public_key"].as_str().unwrap()).unwrap();
    let key = ed25519_dalek::VerifyingKey::from_bytes(&key.try_into().unwrap()).unwrap();
    let opened = mlops_ml::artifact::open(&bytes, &key).unwrap();
    assert_eq!(opened.metrics["accuracy"], 0.8);
    assert_eq!(
        mlops_ml::artifact::digest(&bytes[bytes.iter().position(|b| *b == b'\n').unwrap() + 1..]),
        sha256
    );

    // One byte flipped where it is stored.
    let mut stored = std::fs::read(&uri).unwrap();
    let at = stored.len() - 5;
    stored[at] ^= 0x20;
    std::fs::write(&uri, &stored).unwrap();
    let (status, refused) = r
        .get(&format!("/v1/models/{model}/versions/1/artifact"))
        .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(refused["error"]["code"], "artifact_integrity", "{refused}");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("digest mismatch"),
        "{refused}"
    );
    // And a loader given the tampered bytes refuses them itself, naming both digests.
    let error = mlops_ml::artifact::open(&stored, &key).unwrap_err();
    assert!(
        matches!(&error, mlops_ml::ArtifactError::DigestMismatch { expected, .. } if *expected == sha256),
        "{error}"
    );
    // Training, which scores the production version, refuses it the same way.
    let client =
        mlops_ml::registry::RegistryClient::new(mlops_integration_tests::client(), &r.service.url);
    let error = client.production(&model).await.unwrap_err();
    assert!(error.contains("digest mismatch"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_decisions_from_the_monitor_widen_promote_and_roll_back() {
    let r = Registry::start(false).await;
    let model = unique("fraud");
    r.register(&model, 0.8).await;
    r.register(&model, 0.9).await;
    let codec = std::sync::Arc::new(mlops_integration_tests::codec(&r.service.url));
    let kafka = mlops_kafka::KafkaConfig::with_bootstrap(r.bootstrap.clone());
    mlops_kafka::ensure_topics(
        &kafka,
        &[mlops_kafka::TopicSpec::new(topics::CANARY_DECISIONS, 1)],
    )
    .await
    .unwrap();
    let producer = Producer::new(&kafka, codec).unwrap();
    let decide =
        |id: &str, version: i32, verdict: CanaryVerdict, percent: Option<f64>| CanaryDecision {
            decision_id: id.to_owned(),
            model_name: model.clone(),
            canary_version: version,
            production_version: Some(1),
            decision: verdict,
            new_percent: percent,
            evidence: BTreeMap::from([("requests".to_owned(), 500.0)])
                .into_iter()
                .collect(),
            reason: format!("{verdict:?} after 500 requests"),
            decided_at: now_millis(),
            trace_id: None,
        };
    let widen = decide("d-1", 2, CanaryVerdict::Widen, Some(50.0));
    for decision in [
        &widen,
        &widen,
        &decide("d-2", 2, CanaryVerdict::Promote, None),
    ] {
        producer
            .send_event(
                topics::CANARY_DECISIONS,
                Some(model.as_bytes()),
                decision,
                OwnedHeaders::new(),
            )
            .await
            .unwrap();
    }
    // registered 1, production 1, registered 2, canary 2 at 10%, widened to 50% (once,
    // though the decision came twice), promoted, 1 archived.
    let events = r.lifecycle(&model, 7).await;
    assert_eq!(events[4].canary_percent, Some(50.0));
    assert_eq!(events[4].triggering_event_id.as_deref(), Some("d-1"));
    assert_eq!(
        (events[5].version, events[5].stage),
        (2, ModelStage::Production)
    );
    assert_eq!(
        (events[6].version, events[6].stage),
        (1, ModelStage::Archived)
    );
    assert_eq!(events[5].actor, "monitoring");

    // A canary rolled back by the monitor is archived; production stays.
    r.register(&model, 0.5).await;
    producer
        .send_event(
            topics::CANARY_DECISIONS,
            Some(model.as_bytes()),
            &decide("d-3", 3, CanaryVerdict::Rollback, None),
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    let events = r.lifecycle(&model, 10).await;
    assert_eq!(
        (events[9].version, events[9].stage),
        (3, ModelStage::Archived)
    );
    let (_, summary) = r.get(&format!("/v1/models/{model}")).await;
    assert_eq!(summary["production"], 2, "{summary}");
    assert_eq!(summary["canary"], Value::Null, "{summary}");
    let (_, lineage) = r
        .get(&format!("/v1/models/{model}/versions/2/lineage"))
        .await;
    assert_eq!(lineage["training_run_id"], "run-0.9", "{lineage}");
    assert_eq!(
        lineage["trigger"]["event_ids"],
        json!(["drift-7"]),
        "{lineage}"
    );
    assert_eq!(lineage["code_version"], "abc123", "{lineage}");
}

/// With encryption keys configured, artifacts are stored sealed (AES-256-GCM, the key's
/// name in their header) and served decrypted and verified; after a rotation the old ones
/// still open; with only a wrong key, a download fails and says which key it needs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn artifacts_are_encrypted_at_rest_and_keys_rotate() {
    let mut r = Registry::start(false).await;
    let keys = r.service.data_dir().join("keys.json");
    let write_keys = |current: &str, keys_hex: &[(&str, &str)]| {
        let named: serde_json::Map<String, Value> = keys_hex
            .iter()
            .map(|(name, byte)| ((*name).to_owned(), json!(byte.repeat(32))))
            .collect();
        std::fs::write(
            &keys,
            json!({"current": current, "keys": named}).to_string(),
        )
        .unwrap();
    };
    write_keys("k1", &[("k1", "11")]);
    r.service.pause().await;
    r.service.config_mut().common.encryption.keys_file = Some(keys.clone());
    r.service.resume().await;

    let model = unique("sealed");
    let version = r.register(&model, 0.5).await;
    let objects = mlops_testkit::files_under(&r.service.data_dir());
    let artifact_files: Vec<_> = objects
        .iter()
        .filter(|p| p.to_string_lossy().contains("artifacts"))
        .collect();
    assert!(!artifact_files.is_empty(), "{objects:?}");
    for file in &artifact_files {
        let stored = std::fs::read(file).unwrap();
        assert!(
            stored.starts_with(b"MLOPSENC1"),
            "{} is not sealed",
            file.display()
        );
        assert!(
            !stored.windows(model.len()).any(|w| w == model.as_bytes()),
            "the artifact is readable at rest"
        );
    }
    let download = format!("/v1/models/{model}/versions/{version}/artifact");
    let answer = r.http.get(r.url(&download)).send().await.unwrap();
    assert_eq!(answer.status(), StatusCode::OK);

    // Rotated to k2: the k1 artifact still opens.
    write_keys("k2", &[("k1", "11"), ("k2", "22")]);
    r.service.pause().await;
    r.service.resume().await;
    assert_eq!(
        r.http.get(r.url(&download)).send().await.unwrap().status(),
        StatusCode::OK
    );

    // Only a key of another name: refused, naming the key it needs.
    write_keys("k3", &[("k3", "33")]);
    r.service.pause().await;
    r.service.resume().await;
    let refused = r.http.get(r.url(&download)).send().await.unwrap();
    assert_eq!(refused.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let reason: Value = refused.json().await.unwrap();
    let message = reason["error"]["message"].as_str().unwrap();
    assert!(message.contains("\"k1\""), "{reason}");
}
