//! The platform over TLS, as a user runs it: `mlops up --tls` serves every API over HTTPS
//! only, with certificates of its local CA; the services call each other over HTTPS,
//! verifying that CA; and a service configured for mutual TLS refuses a client without a
//! certificate.

// Tests drive the services from outside, as a user would: plain clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    path::Path,
    process::Stdio,
    time::{Duration, Instant},
};

use mlops_testkit::free_port;
use serde_json::json;
use support::{DEADLINE, Launched, Ports, mlops};

fn trusting(ca: &Path) -> reqwest::ClientBuilder {
    let pem = std::fs::read(ca).expect("the CA certificate");
    let mut builder = reqwest::Client::builder().timeout(Duration::from_secs(30));
    for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap() {
        builder = builder.add_root_certificate(cert);
    }
    builder
}

async fn until_ready(client: &reqwest::Client, url: &str) {
    let started = Instant::now();
    loop {
        if let Ok(r) = client.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "{url} not ready over TLS");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_tls_serves_https_only_and_the_services_trust_each_other() {
    let dir = mlops_testkit::temp_dir();
    let data = dir.path().join("data");
    let ports = Ports::pick();
    let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
    let _launcher = Launched(
        mlops(&["up", "--tls"], &data, &ports)
            .env("MLOPS_BROKER", "tansu")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlops up --tls"),
    );
    let port = |name: &str| ports.services.iter().find(|(s, _)| *s == name).unwrap().1;
    let ca = data.join("tls").join("ca.pem");
    let started = Instant::now();
    while !ca.exists() || !data.join("admin.token").exists() {
        assert!(started.elapsed() < DEADLINE, "no CA or token written");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let https = trusting(&ca).build().unwrap();
    for (service, _) in &ports.services {
        until_ready(&https, &format!("https://127.0.0.1:{}", port(service))).await;
    }

    // Ingestion registers the dataset's schema with the registry: a service-to-service
    // call over HTTPS, verified against the CA, with the service token.
    let declared = https
        .post(format!(
            "https://127.0.0.1:{}/v1/datasets",
            port("ingestion")
        ))
        .bearer_auth(token.trim())
        .json(&json!({
            "name": "tls_payments",
            "schema": {"type": "record", "name": "Payment", "fields": [
                {"name": "id", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]},
            "key": "id", "event_time": "ts", "event_id": "id"
        }))
        .send()
        .await
        .unwrap();
    let status = declared.status();
    assert_eq!(status, 201, "{}", declared.text().await.unwrap());
    // Events over HTTPS, on ingestion's lanes, each acknowledged by the broker.
    for id in ["e1", "e2", "e3"] {
        let sent = https
            .post(format!(
                "https://127.0.0.1:{}/v1/datasets/tls_payments/events",
                port("ingestion")
            ))
            .bearer_auth(token.trim())
            .json(&json!({"id": id, "ts": 1_795_687_200_000_i64}))
            .send()
            .await
            .unwrap();
        let status = sent.status();
        let answer: serde_json::Value = sent.json().await.unwrap();
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["accepted"], 1, "{answer}");
    }
    let subjects: Vec<String> = https
        .get(format!("https://127.0.0.1:{}/subjects", port("registry")))
        .bearer_auth(token.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        subjects.iter().any(|s| s.contains("tls_payments")),
        "{subjects:?}"
    );

    // Plain HTTP gets no answer; nor does a client that does not trust the CA.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let refused = plain
        .get(format!("http://127.0.0.1:{}/healthz", port("registry")))
        .send()
        .await;
    assert!(refused.is_err(), "plain HTTP was answered: {refused:?}");
    let untrusting = plain
        .get(format!("https://127.0.0.1:{}/healthz", port("registry")))
        .send()
        .await;
    assert!(untrusting.is_err(), "an unknown CA was accepted");

    // `mlops status` speaks HTTPS to it.
    let status = mlops(&["status"], &data, &ports)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "mlops status over TLS");
}

/// A service with `tls.client_ca_file` answers only clients presenting a certificate of
/// that CA (mutual TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_a_client_without_a_certificate() {
    let dir = mlops_testkit::temp_dir();
    let data = dir.path();
    let ports = Ports::pick();
    assert!(
        mlops(&["certs"], data, &ports)
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success()
    );
    let tls = data.join("tls");
    let port = free_port();
    let _registry = Launched(
        std::process::Command::new(env!("CARGO_BIN_EXE_mlops"))
            .args(["service", "registry"])
            .env("MLOPS_REGISTRY_PORT", port.to_string())
            .env("MLOPS_DATA_DIR", data.join("registry"))
            .env("MLOPS_AUTH_MODE", "disabled")
            .env(
                "KAFKA_BOOTSTRAP_SERVERS",
                format!("127.0.0.1:{}", free_port()),
            )
            .env("MLOPS_TLS_CERT_FILE", tls.join("registry.pem"))
            .env("MLOPS_TLS_KEY_FILE", tls.join("registry.key"))
            .env("MLOPS_TLS_CLIENT_CA_FILE", tls.join("ca.pem"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let url = format!("https://127.0.0.1:{port}/healthz");
    let mut identity = std::fs::read(tls.join("client.pem")).unwrap();
    identity.extend(std::fs::read(tls.join("client.key")).unwrap());
    let with_certificate = trusting(&tls.join("ca.pem"))
        .identity(reqwest::Identity::from_pem(&identity).unwrap())
        .build()
        .unwrap();
    let started = Instant::now();
    loop {
        match with_certificate.get(&url).send().await {
            Ok(r) if r.status().is_success() => break,
            _ => {
                assert!(
                    started.elapsed() < DEADLINE,
                    "registry not up over mutual TLS"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let without = trusting(&tls.join("ca.pem")).build().unwrap();
    assert!(
        without.get(&url).send().await.is_err(),
        "a client without a certificate was answered"
    );
}
