//! Conformance of the registry's Confluent-compatible Schema Registry API: every endpoint,
//! every compatibility level, Confluent's error codes and content type, the platform's own
//! client, and Confluent's Python client used unmodified.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use mlops_events::{Event, TrainingReason, TrainingRequest, new_id, now_millis};
use mlops_integration_tests::TestRegistry;
use mlops_schema::{AvroCodec, RegistryError};
use mlops_testkit::unique;
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// Every test runs once per database the registry supports: same code, same answers.
macro_rules! on_every_database {
    ($($test:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Database::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $test() {
                super::$test(super::Database::Postgres).await
            })*
        }
    };
}

on_every_database!(
    registration_is_idempotent_and_ignores_formatting,
    versions_are_read_by_number_latest_and_raw_schema,
    lookup_finds_a_registered_schema_under_its_subject,
    invalid_schemas_and_bodies_are_refused_with_reasons,
    backward_is_the_default_and_refuses_a_field_without_default,
    every_compatibility_level_follows_schema_resolution,
    transitive_levels_check_all_versions_and_plain_ones_only_the_latest,
    config_endpoints_validate_and_fall_back_to_global,
    soft_and_permanent_deletes_follow_confluent_rules,
    the_platform_codec_round_trips_events_through_it,
    confluent_python_client_works_against_it_unchanged,
    concurrent_registrations_all_succeed_with_distinct_ids_and_versions,
);

#[derive(Debug, Clone, Copy)]
enum Database {
    Sqlite,
    Postgres,
}

/// A registry with a database of its own. The broker address only feeds `/readyz`.
async fn registry(database: Database) -> TestRegistry {
    mlops_testkit::init_logs();
    let url = match database {
        Database::Sqlite => None,
        Database::Postgres => Some(mlops_integration_tests::fresh_postgres_database().await),
    };
    TestRegistry::start("127.0.0.1:1", url).await
}

/// Started while its PostgreSQL is down (one `docker compose up`, a node restart), the
/// registry does not exit to be restarted with a growing back-off: its port answers —
/// `/healthz` live, `/readyz` 503 naming the database and why, the Schema Registry API
/// 503 `starting` with `Retry-After` — and once the database is up the same process
/// serves, without a restart.
#[tokio::test]
async fn started_before_its_database_it_answers_probes_and_serves_once_the_database_is_up() {
    mlops_testkit::init_logs();
    let postgres = mlops_integration_tests::PrivatePostgres::start();
    postgres.stop();
    let registry = TestRegistry::launch("127.0.0.1:1", Some(postgres.url.clone())).await;
    let http = mlops_integration_tests::client();
    let get = async |path: &str| {
        let response = http
            .get(format!("{}{path}", registry.url))
            .send()
            .await
            .expect("answered while the database is down");
        let retry_after = response.headers().contains_key("retry-after");
        let status = response.status();
        (status, response.json::<Value>().await.unwrap(), retry_after)
    };

    let (status, body, _) = get("/healthz").await;
    assert_eq!((status, &body["status"]), (StatusCode::OK, &json!("ok")));
    let (status, body, _) = get("/readyz").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "not_ready", "{body}");
    let why = body["checks"]["database"].as_str().unwrap_or_default();
    assert!(why.starts_with("waiting for it: "), "{body}");
    let (status, body, retry_after) = get("/subjects").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "starting", "{body}");
    assert!(retry_after, "a client is told when to try again");

    postgres.resume();
    registry.until_serving().await;
    let api = Api::new(&registry);
    let subject = unique("payments-value");
    let (status, body) = api.register(&subject, &record(V1)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(api.get("/subjects").await.1, json!([subject]));
}

fn record(fields: &str) -> String {
    format!(r#"{{"type":"record","name":"Payment","namespace":"test","fields":[{fields}]}}"#)
}

const V1: &str = r#"{"name":"id","type":"string"}"#;
const ADD_DEFAULT: &str =
    r#"{"name":"id","type":"string"},{"name":"amount","type":"double","default":0.0}"#;
const ADD_NO_DEFAULT: &str = r#"{"name":"id","type":"string"},{"name":"amount","type":"double"}"#;

struct Api {
    url: String,
    http: Client,
}

impl Api {
    fn new(registry: &TestRegistry) -> Self {
        Self {
            url: registry.url.clone(),
            http: mlops_integration_tests::client(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self.http.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request
                .header("content-type", CONTENT_TYPE)
                .body(body.to_string());
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .map(|v| v.to_str().unwrap().to_owned());
        assert_eq!(content_type.as_deref(), Some(CONTENT_TYPE), "{path}");
        let text = response.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::PUT, path, Some(body)).await
    }

    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::DELETE, path, None).await
    }

    async fn register(&self, subject: &str, schema: &str) -> (StatusCode, Value) {
        self.post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": schema}),
        )
        .await
    }

    async fn set_level(&self, subject: &str, level: &str) {
        let (status, body) = self
            .put(
                &format!("/config/{subject}"),
                json!({"compatibility": level}),
            )
            .await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"compatibility": level}))
        );
    }
}

fn error(status: StatusCode, code: u32) -> impl Fn((StatusCode, Value)) {
    move |(got_status, body)| {
        assert_eq!(got_status, status, "{body}");
        assert_eq!(body["error_code"], code, "{body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
    }
}

async fn registration_is_idempotent_and_ignores_formatting(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("payments-value");

    let (status, first) = api.register(&subject, &record(V1)).await;
    assert_eq!(status, StatusCode::OK);
    let id = first["id"].as_i64().expect("id");
    assert_eq!(
        api.register(&subject, &record(V1)).await.1,
        json!({"id": id})
    );

    let reformatted = "{ \"namespace\": \"test\",\n  \"fields\": [ { \"type\": \"string\", \"name\": \"id\" } ],\n  \"name\": \"Payment\", \"type\": \"record\" }";
    assert_eq!(
        api.register(&subject, reformatted).await.1,
        json!({"id": id})
    );
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1])
    );

    // The same schema under another subject keeps its global id.
    let other = unique("refunds-value");
    assert_eq!(api.register(&other, &record(V1)).await.1, json!({"id": id}));
    let (_, subjects) = api.get("/subjects").await;
    assert!(subjects.as_array().unwrap().contains(&json!(subject)));
    assert!(subjects.as_array().unwrap().contains(&json!(other)));

    let (status, by_id) = api.get(&format!("/schemas/ids/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    let stored: Value = serde_json::from_str(by_id["schema"].as_str().unwrap()).unwrap();
    assert_eq!(stored, serde_json::from_str::<Value>(&record(V1)).unwrap());
    let (_, usages) = api.get(&format!("/schemas/ids/{id}/versions")).await;
    let usages = usages.as_array().unwrap();
    assert!(usages.contains(&json!({"subject": subject, "version": 1})));
    assert!(usages.contains(&json!({"subject": other, "version": 1})));
    let (status, raw) = api.get(&format!("/schemas/ids/{id}/schema")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw, stored);
    assert_eq!(api.get("/schemas/types").await.1, json!(["AVRO"]));
}

async fn versions_are_read_by_number_latest_and_raw_schema(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("payments-value");
    let v1 = api.register(&subject, &record(V1)).await.1["id"].clone();
    let v2 = api.register(&subject, &record(ADD_DEFAULT)).await.1["id"].clone();
    assert_ne!(v1, v2);

    let (status, one) = api.get(&format!("/subjects/{subject}/versions/1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["subject"], json!(subject));
    assert_eq!((one["version"].clone(), one["id"].clone()), (json!(1), v1));
    for latest in ["latest", "-1"] {
        let (_, body) = api
            .get(&format!("/subjects/{subject}/versions/{latest}"))
            .await;
        assert_eq!(
            (body["version"].clone(), body["id"].clone()),
            (json!(2), v2.clone())
        );
    }
    let (status, raw) = api
        .get(&format!("/subjects/{subject}/versions/2/schema"))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(raw["fields"][1]["name"], "amount");
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions/2/referencedby"))
            .await
            .1,
        json!([])
    );

    error(StatusCode::NOT_FOUND, 40401)(api.get("/subjects/no-such-subject/versions").await);
    error(StatusCode::NOT_FOUND, 40401)(api.get("/subjects/no-such-subject/versions/1").await);
    error(StatusCode::NOT_FOUND, 40402)(api.get(&format!("/subjects/{subject}/versions/9")).await);
    error(StatusCode::UNPROCESSABLE_ENTITY, 42202)(
        api.get(&format!("/subjects/{subject}/versions/0")).await,
    );
    error(StatusCode::UNPROCESSABLE_ENTITY, 42202)(
        api.get(&format!("/subjects/{subject}/versions/one")).await,
    );
    error(StatusCode::NOT_FOUND, 40403)(api.get("/schemas/ids/987654").await);
}

async fn lookup_finds_a_registered_schema_under_its_subject(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("payments-value");
    let id = api.register(&subject, &record(V1)).await.1["id"].clone();
    api.register(&subject, &record(ADD_DEFAULT)).await;

    let (status, found) = api
        .post(
            &format!("/subjects/{subject}"),
            json!({"schema": record(V1)}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (found["version"].clone(), found["id"].clone()),
        (json!(1), id)
    );
    assert_eq!(found["subject"], json!(subject));

    error(StatusCode::NOT_FOUND, 40403)(
        api.post(
            &format!("/subjects/{subject}"),
            json!({"schema": record(ADD_NO_DEFAULT)}),
        )
        .await,
    );
    error(StatusCode::NOT_FOUND, 40401)(
        api.post("/subjects/nobody", json!({"schema": record(V1)}))
            .await,
    );
}

async fn invalid_schemas_and_bodies_are_refused_with_reasons(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("bad-value");
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201)(
        api.register(&subject, r#"{"type":"recrod","name":"X"}"#)
            .await,
    );
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201)(api.register(&subject, "not json").await);
    error(StatusCode::UNPROCESSABLE_ENTITY, 42201)(
        api.post(
            &format!("/subjects/{subject}/versions"),
            json!({"schema": "{}", "schemaType": "PROTOBUF"}),
        )
        .await,
    );
    error(StatusCode::BAD_REQUEST, 400)(
        api.post(
            &format!("/subjects/{subject}/versions"),
            json!({"schemo": 1}),
        )
        .await,
    );
    // Nothing was registered by the failures.
    error(StatusCode::NOT_FOUND, 40401)(api.get(&format!("/subjects/{subject}/versions")).await);
}

async fn backward_is_the_default_and_refuses_a_field_without_default(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    assert_eq!(
        api.get("/config").await.1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    let subject = unique("payments-value");
    api.register(&subject, &record(V1)).await;

    let (status, body) = api.register(&subject, &record(ADD_NO_DEFAULT)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["error_code"], 409);
    assert!(
        body["message"].as_str().unwrap().contains("incompatible"),
        "{body}"
    );
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1])
    );

    let (status, body) = api.register(&subject, &record(ADD_DEFAULT)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([1, 2])
    );
}

/// Each level against the rules of Avro schema resolution, through the compatibility
/// endpoint and through registration.
async fn every_compatibility_level_follows_schema_resolution(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    // (level, candidate fields, compatible with v1 = {id}?)
    let removes_id = r#"{"name":"amount","type":"double","default":0.0}"#;
    let cases = [
        ("NONE", ADD_NO_DEFAULT, true),
        ("NONE", removes_id, true),
        ("BACKWARD", ADD_NO_DEFAULT, false),
        ("BACKWARD", ADD_DEFAULT, true),
        ("BACKWARD", removes_id, true),
        ("BACKWARD_TRANSITIVE", ADD_NO_DEFAULT, false),
        ("FORWARD", ADD_NO_DEFAULT, true),
        ("FORWARD", removes_id, false),
        ("FORWARD_TRANSITIVE", removes_id, false),
        ("FULL", ADD_DEFAULT, true),
        ("FULL", ADD_NO_DEFAULT, false),
        ("FULL", removes_id, false),
        ("FULL_TRANSITIVE", ADD_DEFAULT, true),
        ("FULL_TRANSITIVE", ADD_NO_DEFAULT, false),
    ];
    for (level, fields, expected) in cases {
        let subject = unique("levels-value");
        api.register(&subject, &record(V1)).await;
        api.set_level(&subject, level).await;
        assert_eq!(
            api.get(&format!("/config/{subject}")).await.1,
            json!({"compatibilityLevel": level})
        );
        let (status, verdict) = api
            .post(
                &format!("/compatibility/subjects/{subject}/versions/latest?verbose=true"),
                json!({"schema": record(fields)}),
            )
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            verdict["is_compatible"], expected,
            "{level} {fields}: {verdict}"
        );
        assert_eq!(
            verdict["messages"].as_array().unwrap().is_empty(),
            expected,
            "{verdict}"
        );
        let (status, _) = api.register(&subject, &record(fields)).await;
        let want = if expected {
            StatusCode::OK
        } else {
            StatusCode::CONFLICT
        };
        assert_eq!(status, want, "{level} {fields}: registration");
    }
}

async fn transitive_levels_check_all_versions_and_plain_ones_only_the_latest(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let v1 = record(r#"{"name":"a","type":"int"}"#);
    let v2 = record(
        r#"{"name":"a","type":"int","default":0},{"name":"b","type":"string","default":"x"}"#,
    );
    // v3 drops `a`: v2 (which defaults it) can read v3 data, v1 cannot.
    let v3 = record(r#"{"name":"b","type":"string","default":"x"}"#);
    for (level, expected) in [("FORWARD", true), ("FORWARD_TRANSITIVE", false)] {
        let subject = unique("transitive-value");
        api.set_level(&subject, "NONE").await;
        api.register(&subject, &v1).await;
        api.register(&subject, &v2).await;
        api.set_level(&subject, level).await;
        let (_, verdict) = api
            .post(
                &format!("/compatibility/subjects/{subject}/versions"),
                json!({"schema": v3}),
            )
            .await;
        assert_eq!(verdict["is_compatible"], expected, "{level}: {verdict}");
        // Against version 1 alone, v3 is never forward compatible.
        let (_, verdict) = api
            .post(
                &format!("/compatibility/subjects/{subject}/versions/1"),
                json!({"schema": v3}),
            )
            .await;
        assert_eq!(verdict["is_compatible"], false, "{level} vs v1");
        let (status, _) = api.register(&subject, &v3).await;
        assert_eq!(status == StatusCode::OK, expected, "{level}: registration");
    }
}

async fn config_endpoints_validate_and_fall_back_to_global(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("config-value");
    error(StatusCode::NOT_FOUND, 40408)(api.get(&format!("/config/{subject}")).await);
    assert_eq!(
        api.get(&format!("/config/{subject}?defaultToGlobal=true"))
            .await
            .1,
        json!({"compatibilityLevel": "BACKWARD"})
    );
    error(StatusCode::UNPROCESSABLE_ENTITY, 42203)(
        api.put(
            &format!("/config/{subject}"),
            json!({"compatibility": "SIDEWAYS"}),
        )
        .await,
    );
    api.set_level(&subject, "FULL").await;
    assert_eq!(
        api.delete(&format!("/config/{subject}")).await.1,
        json!({"compatibilityLevel": "FULL"})
    );
    error(StatusCode::NOT_FOUND, 40408)(api.get(&format!("/config/{subject}")).await);

    // The global level decides for subjects without their own.
    let (status, body) = api.put("/config", json!({"compatibility": "NONE"})).await;
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"compatibility": "NONE"}))
    );
    assert_eq!(
        api.get("/config").await.1,
        json!({"compatibilityLevel": "NONE"})
    );
    api.register(&subject, &record(V1)).await;
    assert_eq!(
        api.register(&subject, &record(ADD_NO_DEFAULT)).await.0,
        StatusCode::OK
    );
}

async fn soft_and_permanent_deletes_follow_confluent_rules(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let subject = unique("deletes-value");
    api.register(&subject, &record(V1)).await;
    api.register(&subject, &record(ADD_DEFAULT)).await;

    error(StatusCode::NOT_FOUND, 40407)(
        api.delete(&format!("/subjects/{subject}/versions/1?permanent=true"))
            .await,
    );
    assert_eq!(
        api.delete(&format!("/subjects/{subject}/versions/1"))
            .await
            .1,
        json!(1)
    );
    error(StatusCode::NOT_FOUND, 40406)(
        api.delete(&format!("/subjects/{subject}/versions/1")).await,
    );
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([2])
    );
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions?deleted=true"))
            .await
            .1,
        json!([1, 2])
    );
    error(StatusCode::NOT_FOUND, 40402)(api.get(&format!("/subjects/{subject}/versions/1")).await);
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions/1?deleted=true"))
            .await
            .1["version"],
        1
    );

    error(StatusCode::NOT_FOUND, 40405)(
        api.delete(&format!("/subjects/{subject}?permanent=true"))
            .await,
    );
    assert_eq!(
        api.delete(&format!("/subjects/{subject}")).await.1,
        json!([2])
    );
    error(StatusCode::NOT_FOUND, 40404)(api.delete(&format!("/subjects/{subject}")).await);
    let (_, subjects) = api.get("/subjects").await;
    assert!(!subjects.as_array().unwrap().contains(&json!(subject)));
    let (_, all) = api.get("/subjects?deleted=true").await;
    assert!(all.as_array().unwrap().contains(&json!(subject)));

    // Re-registering after a soft delete makes a new version, never reuses a number.
    api.register(&subject, &record(V1)).await;
    assert_eq!(
        api.get(&format!("/subjects/{subject}/versions")).await.1,
        json!([3])
    );

    assert_eq!(
        api.delete(&format!("/subjects/{subject}")).await.1,
        json!([3])
    );
    assert_eq!(
        api.delete(&format!("/subjects/{subject}?permanent=true"))
            .await
            .1,
        json!([1, 2, 3])
    );
    error(StatusCode::NOT_FOUND, 40401)(api.delete(&format!("/subjects/{subject}")).await);
}

async fn the_platform_codec_round_trips_events_through_it(database: Database) {
    let registry = registry(database).await;
    let codec = mlops_integration_tests::codec(&registry.url);
    let topic = unique("training.requests");
    let request = TrainingRequest {
        request_id: new_id(),
        model_name: "fraud".into(),
        reason: TrainingReason::Drift,
        window_start: None,
        window_end: Some(now_millis()),
        triggering_event_id: Some(new_id()),
        requested_by: "monitoring".into(),
        requested_at: now_millis(),
        trace_id: None,
    };
    let bytes = codec
        .encode(&topic, &request)
        .await
        .expect("encode registers the schema");
    assert_eq!(bytes[0], 0, "Confluent magic byte");
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);

    // A fresh client, with empty caches, resolves the id through the API.
    let fresh = mlops_integration_tests::codec(&registry.url);
    let back: TrainingRequest = fresh.decode(&bytes).await.expect("decode");
    assert_eq!(back, request);

    let api = Api::new(&registry);
    let (_, latest) = api
        .get(&format!("/subjects/{topic}-value/versions/latest"))
        .await;
    assert_eq!(latest["id"], id);
    let registered: Value = serde_json::from_str(latest["schema"].as_str().unwrap()).unwrap();
    let source: Value = serde_json::from_str(TrainingRequest::SCHEMA).unwrap();
    assert_eq!(
        registered, source,
        "registered schema differs from schemas/"
    );

    // A record of another type, or an unknown id, is refused as poison.
    let wrong = fresh
        .decode::<mlops_events::DriftEvent>(&bytes)
        .await
        .unwrap_err();
    assert!(wrong.is_poison());
    assert!(
        wrong
            .to_string()
            .contains("expected io.mlops.events.DriftEvent"),
        "{wrong}"
    );
    let unknown = fresh
        .decode::<TrainingRequest>(&[0, 0, 1, 0, 0, 2])
        .await
        .unwrap_err();
    assert!(unknown.is_poison(), "{unknown}");
}

/// Confluent's Python client (`confluent-kafka`, installed by `tests/run.sh`) drives the
/// API, and Avro bytes cross between our codec and Confluent's serde in both directions.
async fn confluent_python_client_works_against_it_unchanged(database: Database) {
    let registry = registry(database).await;
    let python = mlops_integration_tests::python();
    let codec = mlops_integration_tests::codec(&registry.url);
    let topic = unique("training.requests");
    let request = TrainingRequest {
        request_id: new_id(),
        model_name: "fraud".into(),
        reason: TrainingReason::Drift,
        window_start: Some(1_700_000_000_000),
        window_end: None,
        triggering_event_id: Some(new_id()),
        requested_by: "monitoring".into(),
        requested_at: 1_700_000_123_456,
        trace_id: None,
    };
    let ours = codec.encode(&topic, &request).await.expect("encode");
    let hex: String = ours.iter().map(|b| format!("{b:02x}")).collect();
    let dir = env!("CARGO_MANIFEST_DIR");
    // Asynchronously: the registry under test runs on this same runtime.
    let output = tokio::process::Command::new(python)
        .arg(format!("{dir}/python/schema_registry_client.py"))
        .env(
            "MLOPS_TOKEN",
            &mlops_integration_tests::auth::tokens().admin,
        )
        .arg(&registry.url)
        .arg(unique("py-orders"))
        .arg(format!("{dir}/../schemas/training_request.avsc"))
        .arg(&topic)
        .arg(&hex)
        .output()
        .await
        .expect("run the Python client");
    assert!(
        output.status.success(),
        "Python client failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON report");

    assert_eq!(report["register_idempotent"], true, "{report}");
    assert_eq!(report["latest_version"], 1, "{report}");
    assert_eq!(report["latest_id_matches"], true, "{report}");
    assert_eq!(report["lookup_version"], 1, "{report}");
    assert_eq!(report["schema_by_id_name"], "Order", "{report}");
    assert_eq!(report["compatible_ok"], true, "{report}");
    assert_eq!(report["compatible_bad"], false, "{report}");
    assert_eq!(report["incompatible_refused_code"], 409, "{report}");
    assert_eq!(report["compatibility_after_set"], "NONE", "{report}");
    assert_eq!(report["subjects_include"], true, "{report}");
    assert_eq!(report["missing_version_code"], 40402, "{report}");

    let from_rust = &report["from_rust"];
    assert_eq!(from_rust["request_id"], request.request_id, "{report}");
    assert_eq!(from_rust["model_name"], "fraud");
    assert_eq!(from_rust["reason"], "drift");

    let text = report["to_rust_hex"].as_str().expect("hex");
    let theirs: Vec<u8> = (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex"))
        .collect();
    assert_eq!(theirs[1..5], ours[1..5], "same schema, same id");
    let back: TrainingRequest = codec
        .decode(&theirs)
        .await
        .expect("our codec reads Confluent's bytes");
    assert_eq!(
        back,
        TrainingRequest {
            request_id: "written-by-python".into(),
            reason: TrainingReason::NewData,
            ..request
        }
    );
}

/// 20 different schemas registered at once, each under its own subject and all under one
/// shared subject: every request succeeds, ids are distinct, the shared subject's
/// versions are 1..=20. (On PostgreSQL, `MAX(id) + 1` read by two transactions at once
/// used to give one of them a 500.)
async fn concurrent_registrations_all_succeed_with_distinct_ids_and_versions(database: Database) {
    let registry = registry(database).await;
    let api = Api::new(&registry);
    let shared = unique("shared");
    let (status, _) = api
        .put(
            &format!("/config/{shared}"),
            json!({"compatibility": "NONE"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let schema = |i: usize| record(&format!(r#"{{"name":"f{i}","type":"long"}}"#));
    let own = futures::future::join_all((0..20).map(|i| {
        let api = &api;
        let subject = unique(&format!("own{i}"));
        async move { api.register(&subject, &schema(i)).await }
    }));
    let together = futures::future::join_all((0..20).map(|i| {
        let (api, shared) = (&api, &shared);
        async move { api.register(shared, &schema(i)).await }
    }));
    let (own, together) = tokio::join!(own, together);
    let mut ids = std::collections::BTreeSet::new();
    for (status, body) in own.iter().chain(&together) {
        assert_eq!(*status, StatusCode::OK, "{body}");
        ids.insert(body["id"].as_i64().unwrap());
    }
    assert_eq!(ids.len(), 20, "one id per distinct schema: {ids:?}");
    let (status, versions) = api.get(&format!("/subjects/{shared}/versions")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(versions, json!((1..=20).collect::<Vec<_>>()));
}

/// The platform's one client tells "not there", "refused" and "try later" apart, and a
/// codec that met an outage asks again once the registry is back (no failure is cached).
#[tokio::test]
async fn the_client_classifies_answers_and_an_outage_is_never_cached() {
    let mut registry = registry(Database::Sqlite).await;
    let client = mlops_integration_tests::auth::registry_client(
        &registry.url,
        std::time::Duration::from_secs(2),
        1,
    );
    let subject = format!("{}-value", unique("classified"));
    assert!(matches!(
        client.latest(&subject).await,
        Err(RegistryError::NotFound(_))
    ));
    assert!(matches!(
        client.register(&subject, "{").await,
        Err(RegistryError::Invalid(_))
    ));
    let id = client.register(&subject, &record(V1)).await.unwrap();
    assert_eq!(client.latest(&subject).await.unwrap().id, id);
    assert_eq!(
        client.lookup(&subject, &record(V1)).await.unwrap().version,
        1
    );
    assert!(matches!(
        client.register(&subject, &record(ADD_NO_DEFAULT)).await,
        Err(RegistryError::Incompatible(_))
    ));
    let usages = client.usages(id).await.unwrap();
    assert_eq!(usages.len(), 1);
    assert_eq!(usages[0].subject, subject);

    // A record framed with that id, decoded by a fresh codec while the registry is down.
    let schema = apache_avro::Schema::parse_str(&record(V1)).unwrap();
    let mut value = apache_avro::types::Record::new(&schema).unwrap();
    value.put("id", "p-1");
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(value)
        .unwrap();
    let framed = mlops_schema::frame(id, &body);
    let codec = AvroCodec::with_registry(client.clone());
    registry.pause().await;
    assert!(matches!(
        client.latest(&subject).await,
        Err(RegistryError::Unavailable(_))
    ));
    let outage = codec.decode_record(&framed).await.unwrap_err();
    assert!(
        !outage.is_poison(),
        "an outage is not the record's fault: {outage}"
    );
    registry.resume().await;
    let decoded = codec.decode_record(&framed).await.expect("asked again");
    assert_eq!(decoded.name.as_deref(), Some("test.Payment"));
}
