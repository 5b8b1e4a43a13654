//! Who may call what, on the real services: every route of every service's table (and
//! nothing beyond them), asked by every role's token, without one and with a forged one.

use std::collections::BTreeSet;

use mlops_integration_tests::{
    TestRegistry,
    auth::{bearer, tokens},
    platform::Platform,
};
use mlops_service::{
    auth::PlatformRole,
    routes::{OPEN, Route},
};
use reqwest::{Client, StatusCode};

/// A service's name, the (method, path) pairs its router serves, and its route table.
type ServedApi = (&'static str, Vec<(&'static str, String)>, Vec<Route>);

/// A client without credentials of its own: each request carries the token it tests.
fn anonymous() -> Client {
    Client::builder()
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Each service's routes as its router serves them, beside its table.
fn apis() -> Vec<ServedApi> {
    let served = |api: Vec<(&'static str, String)>| api;
    vec![
        (
            "ingestion",
            served(ingestion::api::routes().served().to_vec()),
            ingestion::api::ROUTES.to_vec(),
        ),
        (
            "feature",
            served(feature::api::routes().served().to_vec()),
            feature::api::ROUTES.to_vec(),
        ),
        (
            "registry",
            [
                registry::schema_registry::routes().served().to_vec(),
                registry::models::api::routes(1).served().to_vec(),
            ]
            .concat(),
            [
                registry::schema_registry::ROUTES,
                registry::models::api::ROUTES,
            ]
            .concat(),
        ),
        (
            "training",
            served(training::api::routes().served().to_vec()),
            training::api::ROUTES.to_vec(),
        ),
        (
            "serving",
            served(serving::oip::routes().served().to_vec()),
            serving::oip::ROUTES.to_vec(),
        ),
        (
            "monitoring",
            served(monitoring::api::routes().served().to_vec()),
            monitoring::api::ROUTES.to_vec(),
        ),
    ]
}

/// Every endpoint a service's router serves has a role in its table, except the probes;
/// and the table declares nothing the router does not serve.
#[test]
fn every_endpoint_but_the_probes_declares_a_role() {
    for (service, served, table) in apis() {
        assert!(!served.is_empty(), "{service} serves nothing?");
        for (method, path) in &served {
            let declared = table.iter().any(|r| r.method == *method && r.path == path);
            assert!(
                declared || OPEN.contains(&path.as_str()),
                "{service}: {method} {path} has no role"
            );
        }
        for route in &table {
            assert!(
                served
                    .iter()
                    .any(|(m, p)| *m == route.method && p == route.path),
                "{service}: {route:?} is declared but not served"
            );
        }
    }
}

proptest::proptest! {
    /// Whatever a route's parameters hold, a request on it is gated as that route — no
    /// two routes of a service can be confused (`/v1/models/x:rollback` is not a read).
    #[test]
    fn every_request_path_is_gated_as_its_own_route(value in "[A-Za-z0-9_.~-]{1,24}") {
        for (service, _, table) in apis() {
            for route in &table {
                let path = route.example_path(&value);
                let found = mlops_service::routes::route_for(&table, route.method, &path);
                proptest::prop_assert_eq!(found, Some(route), "{} {}", service, path);
            }
        }
    }

    /// Any method and path: a route or none, never a panic.
    #[test]
    fn any_request_line_is_matched_safely(
        method in "GET|POST|PUT|DELETE|PATCH|[A-Z]{1,7}", path in "(/[A-Za-z0-9{}:._~%-]{0,10}){0,8}",
    ) {
        for (_, _, table) in apis() {
            let _ = mlops_service::routes::route_for(&table, &method, &path);
        }
    }
}

/// The tokens of the matrix: who, and the roles their principal holds.
fn callers() -> Vec<(&'static str, Option<String>, BTreeSet<PlatformRole>)> {
    let t = tokens();
    let one = |r| BTreeSet::from([r]);
    vec![
        ("nobody", None, BTreeSet::new()),
        ("forged", Some("mlops_0000".to_owned()), BTreeSet::new()),
        (
            "producer",
            Some(t.producer.clone()),
            one(PlatformRole::Producer),
        ),
        (
            "data-scientist",
            Some(t.data_scientist.clone()),
            one(PlatformRole::DataScientist),
        ),
        (
            "approver",
            Some(t.approver.clone()),
            one(PlatformRole::Approver),
        ),
        ("sre", Some(t.sre.clone()), one(PlatformRole::Sre)),
        ("admin", Some(t.admin.clone()), one(PlatformRole::Admin)),
    ]
}

async fn ask(http: &Client, url: &str, route: &Route, token: Option<&str>) -> (StatusCode, String) {
    let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
    let mut request = http
        .request(
            method,
            format!("{url}{}", route.example_path("nothing_here")),
        )
        .header("content-type", "application/json")
        .body("{}");
    if let Some(token) = token {
        request = request.headers(bearer(token));
    }
    let response = request.send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}

/// 401 without valid credentials, 403 with a role that does not grant the route's, and
/// past the gate (the handler's own answer) otherwise — each refusal a JSON reason.
async fn assert_matrix(http: &Client, service: &str, url: &str, table: &[Route]) {
    let mut checked = 0;
    for route in table {
        for (who, token, roles) in callers() {
            let (status, body) = ask(http, url, route, token.as_deref()).await;
            let granted = roles.iter().any(|r| r.grants(route.role));
            let expected = if token.is_none() || who == "forged" {
                Some(StatusCode::UNAUTHORIZED)
            } else if !granted {
                Some(StatusCode::FORBIDDEN)
            } else {
                None
            };
            let context = format!(
                "{service}: {who} on {} {}: {status} {body}",
                route.method, route.path
            );
            match expected {
                Some(expected) => {
                    assert_eq!(status, expected, "{context}");
                    let reason: serde_json::Value = serde_json::from_str(&body).expect(&context);
                    assert!(
                        reason.to_string().len() > 20,
                        "a refusal names its reason: {context}"
                    );
                }
                None => assert!(
                    status != StatusCode::UNAUTHORIZED && status != StatusCode::FORBIDDEN,
                    "{context}"
                ),
            }
            checked += 1;
        }
    }
    assert_eq!(checked, table.len() * callers().len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_role_against_every_endpoint_of_every_service() {
    let p = Platform::start().await;
    let training = p.training(1_000).await;
    let mut serving_config = serving::default_config();
    serving_config.common.kafka.bootstrap_servers = p.broker.bootstrap_servers.clone();
    serving_config.common.schema_registry.url = p.registry.url.clone();
    serving_config.serving.registry_url = p.registry.url.clone();
    serving_config.serving.feature_url = p.feature.url.clone();
    mlops_integration_tests::auth::secure(&mut serving_config.common);
    let serving = mlops_integration_tests::TestService::run(|listener, cancel| {
        serving::run(serving_config, listener, cancel)
    })
    .await;
    let mut monitoring_config = monitoring::default_config();
    monitoring_config.common.kafka.bootstrap_servers = p.broker.bootstrap_servers.clone();
    monitoring_config.common.schema_registry.url = p.registry.url.clone();
    monitoring_config.monitoring.registry_url = p.registry.url.clone();
    monitoring_config.monitoring.feature_url = p.feature.url.clone();
    mlops_integration_tests::auth::secure(&mut monitoring_config.common);
    let monitoring = mlops_integration_tests::TestService::run(|listener, cancel| {
        monitoring::run(monitoring_config, listener, cancel)
    })
    .await;
    let http = anonymous();
    assert_matrix(&http, "ingestion", &p.ingestion.url, ingestion::api::ROUTES).await;
    assert_matrix(&http, "feature", &p.feature.url, feature::api::ROUTES).await;
    assert_matrix(
        &http,
        "registry",
        &p.registry.url,
        registry::models::api::ROUTES,
    )
    .await;
    assert_matrix(
        &http,
        "schema registry",
        &p.registry.url,
        registry::schema_registry::ROUTES,
    )
    .await;
    assert_matrix(&http, "training", &training.url, training::api::ROUTES).await;
    assert_matrix(&http, "serving", &serving.url, serving::oip::ROUTES).await;
    assert_matrix(
        &http,
        "monitoring",
        &monitoring.url,
        monitoring::api::ROUTES,
    )
    .await;
    assert_matrix(&http, "audit", &p.registry.url, registry::audit::ROUTES).await;

    // The probes answer anyone.
    for url in [
        &p.ingestion.url,
        &p.feature.url,
        &p.registry.url,
        &training.url,
        &serving.url,
        &monitoring.url,
    ] {
        for probe in ["/healthz", "/metrics"] {
            let status = http
                .get(format!("{url}{probe}"))
                .send()
                .await
                .unwrap()
                .status();
            assert_eq!(status, StatusCode::OK, "{url}{probe}");
        }
    }
    training.stop().await;
}

/// A producer token limited to `payments` publishes there and nowhere else; a method or a
/// path no table declares is not served, whoever asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_producer_scoped_to_one_dataset_cannot_publish_to_another() {
    let p = Platform::start().await;
    let http = anonymous();
    let t = tokens();
    let admin = bearer(&t.admin);
    let mut statuses = Vec::new();
    for dataset in ["payments", "refunds"] {
        let schema = serde_json::json!({"type": "record", "name": "Payment", "fields": [
            {"name": "id", "type": "string"}, {"name": "amount", "type": "double"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]});
        let declared = http
            .post(format!("{}/v1/datasets", p.ingestion.url))
            .headers(admin.clone())
            .json(
                &serde_json::json!({"name": dataset, "schema": schema, "key": "id",
                                      "event_time": "ts", "event_id": "id"}),
            )
            .send()
            .await
            .unwrap();
        assert!(
            declared.status().is_success() || declared.status() == StatusCode::CONFLICT,
            "{}",
            declared.text().await.unwrap()
        );
        let published = http
            .post(format!("{}/v1/datasets/{dataset}/events", p.ingestion.url))
            .headers(bearer(&t.payments_producer))
            .json(&serde_json::json!({"id": "e1", "amount": 3.5, "ts": 1_795_687_200_000_i64}))
            .send()
            .await
            .unwrap();
        let status = published.status();
        let body: serde_json::Value = published.json().await.unwrap();
        statuses.push((dataset, status, body));
    }
    assert!(statuses[0].1.is_success(), "{statuses:?}");
    assert_eq!(statuses[1].1, StatusCode::FORBIDDEN, "{statuses:?}");
    assert!(
        statuses[1].2.to_string().contains("refunds"),
        "the refusal names the dataset: {statuses:?}"
    );

    let undeclared = http
        .delete(format!("{}/v1/datasets/payments", p.ingestion.url))
        .headers(admin.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(undeclared.status(), StatusCode::METHOD_NOT_ALLOWED);
    let unknown = http
        .get(format!("{}/v1/no-such-thing", p.ingestion.url))
        .headers(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// Confluent's clients authenticate to a Schema Registry with HTTP basic auth: the user
/// `token` and the platform's token as password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_registry_takes_basic_auth_as_confluent_clients_send_it() {
    let broker = mlops_testkit::tansu().await;
    let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
    let http = anonymous();
    let url = format!("{}/subjects", registry.url);
    let basic = http
        .get(&url)
        .basic_auth("token", Some(&tokens().sre))
        .send()
        .await
        .unwrap();
    assert_eq!(basic.status(), StatusCode::OK);
    let wrong_user = http
        .get(&url)
        .basic_auth("sre", Some(&tokens().sre))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_user.status(), StatusCode::UNAUTHORIZED);
    let register = http
        .post(format!("{url}/x-value/versions"))
        .basic_auth("token", Some(&tokens().sre))
        .json(&serde_json::json!({"schema": "\"string\""}))
        .send()
        .await
        .unwrap();
    assert_eq!(
        register.status(),
        StatusCode::FORBIDDEN,
        "an SRE reads, does not register"
    );
}

/// Every state change, and every refused attempt to make one, becomes a record on
/// `audit.log` (actor, role, action, resource, outcome, reason, source address), which the
/// registry answers queries about; each service's chain verifies, and changing any record
/// on the topic breaks it at that record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changes_and_refusals_are_audited_in_a_chain_that_shows_tampering() {
    use mlops_events::{AuditOutcome, AuditRecord, audit::verify_chain, topics::AUDIT_LOG};
    let p = Platform::start().await;
    let t = tokens();
    let http = anonymous();
    // A producer may not declare datasets; an operator may.
    let refused = http
        .post(format!("{}/v1/datasets", p.ingestion.url))
        .headers(bearer(&t.producer))
        .json(&serde_json::json!({"name": "forbidden"}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let audit = |query: String| {
        let (http, url) = (http.clone(), format!("{}/v1/audit?{query}", p.registry.url));
        async move {
            let answer = http.get(&url).headers(bearer(&t.sre)).send().await.unwrap();
            assert_eq!(answer.status(), StatusCode::OK);
            let body: serde_json::Value = answer.json().await.unwrap();
            body["records"].as_array().unwrap().clone()
        }
    };
    let resource = format!("resource=datasets/{}", p.dataset);
    let registered = until_found(|| audit(resource.clone())).await;
    let record = &registered[0];
    assert_eq!(record["action"], "dataset.register", "{record}");
    assert_eq!(record["actor"], "test-admin", "{record}");
    assert_eq!(record["role"], "admin", "{record}");
    assert_eq!(record["outcome"], "success", "{record}");
    assert_eq!(record["source_ip"], "127.0.0.1", "{record}");

    let denied = until_found(|| audit("outcome=denied&actor=test-producer".to_owned())).await;
    assert_eq!(denied[0]["resource"], "datasets", "{}", denied[0]);
    assert!(
        denied[0]["reason"].as_str().unwrap().contains("Operator"),
        "{}",
        denied[0]
    );
    // A query that makes no sense is refused, naming the parameter.
    let bad = http
        .get(format!("{}/v1/audit?limit=lots", p.registry.url))
        .headers(bearer(&t.sre))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert!(bad.text().await.unwrap().contains("limit"));

    // The chains on the topic hold.
    let verified: serde_json::Value = http
        .get(format!("{}/v1/audit/verify", p.registry.url))
        .headers(bearer(&t.sre))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(verified["intact"], true, "{verified}");

    // Ingestion's chain, read back from the topic, verifies — until one record changes.
    let codec = mlops_integration_tests::codec(&p.registry.url);
    let kafka = mlops_kafka::KafkaConfig {
        bootstrap_servers: p.broker.bootstrap_servers.clone(),
        ..Default::default()
    };
    let partition = mlops_events::audit::audit_partition("ingestion");
    let payloads = mlops_kafka::read_partition(
        &kafka,
        AUDIT_LOG,
        partition,
        None,
        std::time::Duration::from_secs(30),
    )
    .await
    .unwrap();
    let mut records: Vec<AuditRecord> = Vec::new();
    for payload in &payloads {
        records.push(codec.decode(payload).await.unwrap());
    }
    assert!(records.len() >= 2, "{records:?}");
    assert!(records.iter().any(|r| r.outcome == AuditOutcome::Denied));
    assert_eq!(verify_chain(&records), Ok(records.len()));
    let mut tampered = records.clone();
    tampered[0].actor = "someone-else".to_owned();
    let broken = verify_chain(&tampered).unwrap_err();
    assert_eq!(broken.index, 0, "{broken}");
}

/// What `query` answers once it answers something (within a minute).
async fn until_found<F, Fut>(mut query: F) -> Vec<serde_json::Value>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Vec<serde_json::Value>>,
{
    let found = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    mlops_integration_tests::eventually(std::time::Duration::from_secs(60), || {
        let (answer, found) = (query(), found.clone());
        async move {
            let records = answer.await;
            let any = !records.is_empty();
            *found.lock().unwrap() = records;
            any
        }
    })
    .await
    .expect("the audit trail shows it within a minute");
    found.lock().unwrap().clone()
}
