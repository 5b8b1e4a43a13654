//! A bounded random-body run against the live APIs of a running platform (`mlops up`):
//! every route of every service's route table, asked with random paths, bodies and
//! content types, by a token that may call everything. Each answer must be a 4xx (or a
//! success) with a JSON body that names the problem — never a 5xx, never a dropped
//! connection — the services must still be healthy at the end, and valid events sent
//! throughout must all be accepted.
//!
//! `api-fuzz --requests 100000` (token from `MLOPS_TOKEN`; ports as `mlops up` uses).

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use mlops_service::routes::Route;
use rand::{Rng, SeedableRng, rngs::StdRng, seq::SliceRandom};
use serde_json::{Value as Json, json};

#[derive(Debug, Parser)]
struct Args {
    /// Random requests in all.
    #[arg(long, default_value_t = 100_000)]
    requests: u64,
    /// Requests in flight.
    #[arg(long, default_value_t = 8)]
    concurrency: u64,
    /// Seed of the random choices (a run can be replayed).
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// One valid event is sent after every this many random requests.
    #[arg(long, default_value_t = 100)]
    valid_every: u64,
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
}

const DATASET: &str = "fuzz_payments";

fn services() -> Vec<(&'static str, u16, Vec<Route>)> {
    let port = |name: &str, default: u16| {
        std::env::var(format!("MLOPS_{}_PORT", name.to_ascii_uppercase()))
            .ok()
            .and_then(|p| p.parse().ok())
            .unwrap_or(default)
    };
    vec![
        (
            "ingestion",
            port("ingestion", 8080),
            ingestion::api::ROUTES.to_vec(),
        ),
        (
            "registry",
            port("registry", 8081),
            [
                registry::schema_registry::ROUTES,
                registry::models::api::ROUTES,
                registry::audit::ROUTES,
            ]
            .concat(),
        ),
        (
            "serving",
            port("serving", 8082),
            serving::oip::ROUTES.to_vec(),
        ),
        (
            "feature",
            port("feature", 8083),
            feature::api::ROUTES.to_vec(),
        ),
        (
            "training",
            port("training", 8084),
            training::api::ROUTES.to_vec(),
        ),
        (
            "monitoring",
            port("monitoring", 8085),
            monitoring::api::ROUTES.to_vec(),
        ),
    ]
}

/// A path parameter: real names, and what an attacker or a buggy client sends.
fn parameter(rng: &mut StdRng) -> String {
    let choices = [
        DATASET.to_owned(),
        "1".to_owned(),
        "latest".to_owned(),
        "0".to_owned(),
        "-1".to_owned(),
        "99999999999999999999".to_owned(),
        "raw.fuzz_payments-value".to_owned(),
        "%00".to_owned(),
        "%2e%2e".to_owned(),
        "..".to_owned(),
        "a".repeat(rng.gen_range(1..300)),
        "ünïcödé".to_owned(),
        "x%20y".to_owned(),
        format!("n{}", rng.r#gen::<u32>()),
    ];
    choices.choose(rng).unwrap().clone()
}

fn any_json(rng: &mut StdRng, depth: u32) -> Json {
    let leaf = |rng: &mut StdRng| match rng.gen_range(0..9) {
        0 => Json::Null,
        1 => json!(rng.r#gen::<bool>()),
        2 => json!(rng.r#gen::<i64>()),
        3 => json!(rng.r#gen::<f64>() * 1e12 - 5e11),
        4 => json!(""),
        5 => json!("x".repeat(rng.gen_range(0..2000))),
        6 => json!(
            [
                "web",
                "pos",
                "USD",
                "2026-11-26T10:00:00Z",
                "c-1",
                "not a date"
            ]
            .choose(rng)
            .unwrap()
        ),
        7 => json!(u64::MAX),
        _ => json!(-0.0),
    };
    if depth == 0 || rng.gen_bool(0.4) {
        return leaf(rng);
    }
    let keys = [
        "name",
        "schema",
        "key",
        "event_time",
        "event_id",
        "id",
        "amount",
        "ts",
        "customer_id",
        "view",
        "model",
        "inputs",
        "data",
        "shape",
        "datatype",
        "stage",
        "artifact",
        "reason",
        "compatibility",
        "labels",
        "features",
        "entity_ids",
        "start",
        "end",
        "type",
        "fields",
        "percent",
        "canary_percent",
        "actor",
        "label",
        "entity_id",
        "request_id",
        "version",
    ];
    if rng.gen_bool(0.5) {
        Json::Array(
            (0..rng.gen_range(0..6))
                .map(|_| any_json(rng, depth - 1))
                .collect(),
        )
    } else {
        Json::Object(
            (0..rng.gen_range(0..8))
                .map(|_| {
                    (
                        (*keys.choose(rng).unwrap()).to_owned(),
                        any_json(rng, depth - 1),
                    )
                })
                .collect(),
        )
    }
}

/// A body and its content type: JSON of any shape, broken JSON, bytes, or nothing.
fn body(rng: &mut StdRng) -> (Vec<u8>, Option<&'static str>) {
    let content_type = [
        Some("application/json"),
        Some("application/x-ndjson"),
        Some("application/toml"),
        Some("application/octet-stream"),
        Some("text/plain"),
        None,
    ]
    .choose(rng)
    .copied()
    .unwrap();
    let bytes = match rng.gen_range(0..6) {
        0 => Vec::new(),
        1 => (0..rng.gen_range(1..512)).map(|_| rng.r#gen()).collect(),
        2 => {
            let text = any_json(rng, 4).to_string();
            let cut = rng.gen_range(0..=text.len());
            text.as_bytes()[..cut].to_vec()
        }
        3 => "[".repeat(rng.gen_range(1..5000)).into_bytes(),
        _ => any_json(rng, 5).to_string().into_bytes(),
    };
    (bytes, content_type)
}

#[derive(Default)]
struct Tally {
    by_status: BTreeMap<u16, u64>,
    by_service: BTreeMap<&'static str, u64>,
    failures: Vec<String>,
    transport_errors: u64,
    reconnected: u64,
}

fn valid_event(n: u64) -> Json {
    json!({"id": format!("valid-{n}"), "customer_id": format!("c-{}", n % 50),
           "amount": (n % 97) as f64 + 0.5, "ts": 1_795_687_200_000_i64 + n as i64})
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let http = reqwest::Client::builder()
        .default_headers(mlops_load_tests::auth_headers())
        .timeout(Duration::from_secs(60))
        .build()?;
    let services = Arc::new(services());
    let base = |port: u16| format!("http://{}:{port}", args.host);
    let ingestion = base(services[0].1);

    let declared = http
        .post(format!("{ingestion}/v1/datasets"))
        .json(
            &json!({"name": DATASET, "key": "customer_id", "event_time": "ts", "event_id": "id",
            "schema": {"type": "record", "name": "FuzzPayment", "fields": [
                {"name": "id", "type": "string"}, {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}}),
        )
        .send()
        .await?;
    anyhow::ensure!(
        declared.status().is_success(),
        "declaring the fuzz dataset: {}",
        declared.text().await?
    );

    let next = Arc::new(AtomicU64::new(0));
    let valid_sent = Arc::new(AtomicU64::new(0));
    let valid_accepted = Arc::new(AtomicU64::new(0));
    let tally = Arc::new(Mutex::new(Tally::default()));
    let started = Instant::now();
    let workers = (0..args.concurrency).map(|worker| {
        let (http, services, next, tally) =
            (http.clone(), services.clone(), next.clone(), tally.clone());
        let (valid_sent, valid_accepted) = (valid_sent.clone(), valid_accepted.clone());
        let (requests, valid_every, host, seed) = (
            args.requests,
            args.valid_every,
            args.host.clone(),
            args.seed,
        );
        let ingestion = ingestion.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(seed.wrapping_mul(1_000_003).wrapping_add(worker));
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= requests {
                    return;
                }
                if n % valid_every == 0 {
                    valid_sent.fetch_add(1, Ordering::Relaxed);
                    let answer = http
                        .post(format!("{ingestion}/v1/datasets/{DATASET}/events"))
                        .json(&valid_event(n))
                        .send()
                        .await;
                    if let Ok(answer) = answer
                        && let Ok(body) = answer.json::<Json>().await
                        && (body["accepted"] == 1 || body["duplicates"] == 1)
                    {
                        valid_accepted.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let (service, port, table) = services.choose(&mut rng).unwrap();
                let route = table.choose(&mut rng).unwrap();
                let mut path = String::new();
                let mut rest = route.path;
                while let Some(open) = rest.find('{') {
                    path.push_str(&rest[..open]);
                    let close = rest[open..].find('}').map_or(rest.len(), |c| open + c + 1);
                    path.push_str(&parameter(&mut rng));
                    rest = &rest[close..];
                }
                path.push_str(rest);
                if rng.gen_bool(0.1) {
                    path.push_str(&format!("?limit={}&at=x&resource=%ff", rng.r#gen::<i32>()));
                }
                let (bytes, content_type) = body(&mut rng);
                let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
                let mut request = http
                    .request(method.clone(), format!("http://{host}:{port}{path}"))
                    .body(bytes);
                if let Some(content_type) = content_type {
                    request = request.header("content-type", content_type);
                }
                let retry = request.try_clone();
                let mut answer = request.send().await;
                // A pooled connection the server closed as this request left (after a
                // request whose body its handler did not read) never reached a handler:
                // sent again on a new connection, and counted.
                if let (Err(e), Some(retry)) = (&answer, retry)
                    && (e.is_request() || e.is_connect())
                {
                    tally.lock().unwrap().reconnected += 1;
                    answer = retry.send().await;
                }
                let answer = {
                    let mut counts = tally.lock().unwrap();
                    *counts.by_service.entry(service).or_default() += 1;
                    match answer {
                        Ok(answer) => {
                            *counts
                                .by_status
                                .entry(answer.status().as_u16())
                                .or_default() += 1;
                            Some(answer)
                        }
                        Err(e) => {
                            counts.transport_errors += 1;
                            counts
                                .failures
                                .push(format!("{method} {service}{path}: {e:?}"));
                            None
                        }
                    }
                };
                let Some(answer) = answer else { continue };
                let status = answer.status().as_u16();
                let text = answer.text().await.unwrap_or_default();
                let parsed: Option<Json> = serde_json::from_str(&text).ok();
                // The ingestion API's per-record answer names each record's faults.
                let per_record = parsed.as_ref().is_some_and(|j| {
                    j["results"].as_array().is_some_and(|results| {
                        results.iter().all(|r| {
                            r["status"] != "rejected"
                                || r["errors"].as_array().is_some_and(|errors| {
                                    !errors.is_empty()
                                        && errors.iter().all(|e| {
                                            e["reason"].as_str().is_some_and(|m| !m.is_empty())
                                        })
                                })
                        })
                    })
                });
                let explains = per_record
                    || parsed.as_ref().is_some_and(|j| {
                        j.pointer("/error/message")
                            .and_then(Json::as_str)
                            .is_some_and(|m| !m.is_empty())
                            || j.get("message")
                                .and_then(Json::as_str)
                                .is_some_and(|m| !m.is_empty())
                            || j.get("error")
                                .and_then(Json::as_str)
                                .is_some_and(|m| !m.is_empty())
                    });
                let bad = status >= 500
                    || (status >= 400 && !explains)
                    || (status < 300
                        && !text.is_empty()
                        && parsed.is_none()
                        && !route.path.ends_with("/data")
                        && !route.path.ends_with("/artifact"));
                if bad {
                    let shown: String = text.chars().take(200).collect();
                    tally
                        .lock()
                        .unwrap()
                        .failures
                        .push(format!("{method} {service}{path} -> {status}: {shown}"));
                }
            }
        }
    });
    futures::future::join_all(workers).await;
    let seconds = started.elapsed().as_secs_f64();

    // Still serving, every one of them.
    let mut unhealthy = Vec::new();
    for (service, port, _) in services.iter() {
        let healthy = http
            .get(format!("{}/readyz", base(*port)))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if !healthy {
            unhealthy.push(*service);
        }
    }
    let tally = tally.lock().unwrap();
    let failures = &tally.failures;
    let (sent, accepted) = (
        valid_sent.load(Ordering::Relaxed),
        valid_accepted.load(Ordering::Relaxed),
    );
    println!(
        "{} random requests in {seconds:.0} s; by service {:?}; by status {:?}; sent again on a new \
         connection {}; transport errors {}; \
         failures (5xx, no JSON reason, or no answer): {}; valid events accepted {accepted}/{sent}; \
         unhealthy after: {unhealthy:?}",
        args.requests,
        tally.by_service,
        tally.by_status,
        tally.reconnected,
        tally.transport_errors,
        failures.len()
    );
    for failure in failures.iter().take(20) {
        println!("  {failure}");
    }
    let clean = failures.is_empty()
        && tally.transport_errors == 0
        && accepted == sent
        && unhealthy.is_empty();
    anyhow::ensure!(clean, "the run found problems (above)");
    Ok(())
}
