//! Faults, as they happen to a running platform: `mlops up` on the embedded broker, a
//! stream of payments through ingestion, and meanwhile the ingestion, feature, training,
//! serving and monitoring processes SIGKILLed at random moments (the launcher restarts
//! them) and the broker killed and restarted. A client that gets no answer, or a 5xx,
//! retries with the same event ids, as the API asks of it.
//!
//! Afterwards nothing accepted is lost and nothing is written twice: every event is in the
//! raw topic exactly once (by event id), in the offline store exactly once (by source
//! position), and the online store holds, for every customer, the count and sum of
//! exactly its events, equal to the latest row of the offline store. And the loop still
//! closes: a model put in production before the faults (on a dataset of its own) sees its
//! traffic drift after them, and the restarted monitor, training, registry and serving
//! take it through one retraining, a canary and the promotion.
//!
//! `MLOPS_FAULTS_EVENTS` (default 20,000; the full run is 100,000), `MLOPS_FAULTS_RATE`
//! (events per second offered, default 1,500), `MLOPS_FAULTS_KILLS` (kills per service,
//! default 2) and `MLOPS_FAULTS_SEED` size and replay a run. It runs on the broker
//! `mlops up` picks (Apache Kafka where Java is installed) and on Tansu, one after the
//! other.

// Tests drive the platform from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use mlops_kafka::{KafkaConfig, ReadFrom};
use nix::{sys::signal::Signal, unistd::Pid};
use polars::prelude::*;
use rand::{Rng, SeedableRng, seq::SliceRandom};
use serde_json::{Value, json};
use support::{
    Ports, admin_client, children_of, env_number, launch_with, payments_dataset, post,
    traffic::{Names, Traffic, small_windows},
    wait_until_ready,
};

const DATASET: &str = "payments";
const VIEW: &str = "spend";
/// The model whose loop must close after the faults.
const LOOP: Names = Names {
    dataset: "loop_payments",
    view: "loop_spend",
    model: "loop_big_spender",
};
const CUSTOMERS: usize = 1_000;
const BATCH: usize = 100;
const SENDERS: usize = 4;
/// Every phase (the stream, catching up) ends within this.
const LIMIT: Duration = Duration::from_secs(600);
const KILLED: [&str; 5] = ["ingestion", "feature", "training", "serving", "monitoring"];

fn amount(i: usize) -> f64 {
    (i % 97) as f64 + 0.5
}

fn customer(i: usize) -> String {
    format!("c-{}", i % CUSTOMERS)
}

/// The child of `launcher` whose command line ends with `args` (NUL-separated).
fn child_running(launcher: u32, args: &[&str]) -> Option<u32> {
    let suffix: Vec<u8> = args
        .iter()
        .flat_map(|a| [a.as_bytes(), b"\0"].concat())
        .collect();
    children_of(launcher).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c.ends_with(&suffix))
    })
}

fn process_args(target: &str) -> Vec<&str> {
    if target == "broker" {
        vec!["broker"]
    } else {
        vec!["service", target]
    }
}

/// SIGKILLs `target` (a service or the broker) once it runs, and waits until it is gone.
async fn kill(launcher: u32, target: &str) {
    let args = process_args(target);
    let started = Instant::now();
    let pid = loop {
        if let Some(pid) = child_running(launcher, &args) {
            break pid;
        }
        assert!(started.elapsed() < LIMIT, "{target} never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    while std::fs::metadata(format!("/proc/{pid}/cmdline")).is_ok()
        && children_of(launcher).contains(&pid)
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Batches of event indices still to send, numbered in sending order.
type Queue = VecDeque<(usize, Vec<usize>)>;

/// What the senders saw.
#[derive(Default)]
struct Seen {
    /// Per event: answered `accepted` or `duplicate` (each event is retried until it is).
    accepted: Vec<bool>,
    /// Answers that were not 200, by status (0: no answer at all).
    refusals: HashMap<u16, usize>,
    /// 503 answers that said when to retry.
    retry_after: usize,
}

/// Sends `batch` until every event in it is answered accepted (or duplicate), retrying
/// what is not, the way a well-behaved client does.
async fn send_until_accepted(
    http: &reqwest::Client,
    url: &str,
    events: &[Value],
    mut batch: Vec<usize>,
    seen: &Mutex<Seen>,
    done: &AtomicUsize,
) {
    let started = Instant::now();
    while !batch.is_empty() {
        assert!(started.elapsed() < LIMIT, "a batch was never accepted");
        let body: Vec<&Value> = batch.iter().map(|i| &events[*i]).collect();
        let answer = http.post(url).json(&body).send().await;
        let retry = match answer {
            Err(_) => {
                *seen.lock().unwrap().refusals.entry(0).or_default() += 1;
                true
            }
            Ok(response) if response.status() == reqwest::StatusCode::OK => {
                let body: Value = response.json().await.unwrap_or_default();
                let results = body["results"].as_array().cloned().unwrap_or_default();
                assert_eq!(results.len(), batch.len(), "{body}");
                let mut left = Vec::new();
                let mut seen = seen.lock().unwrap();
                for (i, result) in batch.iter().zip(&results) {
                    match result["status"].as_str() {
                        Some("accepted" | "duplicate") => {
                            if !seen.accepted[*i] {
                                seen.accepted[*i] = true;
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Some("failed") => left.push(*i),
                        other => panic!("event {i}: {other:?} in {body}"),
                    }
                }
                batch = left;
                !batch.is_empty()
            }
            Ok(response) => {
                let status = response.status().as_u16();
                assert!(
                    matches!(status, 429 | 500 | 502 | 503 | 504),
                    "unexpected {status}: {}",
                    response.text().await.unwrap_or_default()
                );
                let mut seen = seen.lock().unwrap();
                *seen.refusals.entry(status).or_default() += 1;
                if status == 503 && response.headers().contains_key("retry-after") {
                    seen.retry_after += 1;
                }
                true
            }
        };
        if retry {
            // A client backs off before retrying; not synchronisation with the platform.
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// One platform at a time: two on two cores would measure each other.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_the_default_broker_kills_and_a_broker_restart_lose_nothing_and_double_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    faults(None).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn on_tansu_kills_and_a_broker_restart_lose_nothing_and_double_nothing() {
    let _alone = ONE_AT_A_TIME.lock().await;
    faults(Some("tansu")).await;
}

async fn faults(engine: Option<&str>) {
    let total = env_number("MLOPS_FAULTS_EVENTS", 20_000) as usize;
    let kills_each = env_number("MLOPS_FAULTS_KILLS", 2) as usize;
    let rate = env_number("MLOPS_FAULTS_RATE", 1_500).max(1) as f64;
    let seed = env_number(
        "MLOPS_FAULTS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    println!(
        "faults ({}): {total} events, {kills_each} kills per service, MLOPS_FAULTS_SEED={seed}",
        engine.unwrap_or("default broker")
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);

    let dir = mlops_testkit::temp_dir();
    let data_dir = dir.path().join("data");
    println!("faults: data and logs in {}", data_dir.display());
    let ports = Ports::pick();
    let launcher = launch_with(&data_dir, &ports, engine, |c| {
        small_windows(c);
    });
    let pid = launcher.id();
    wait_until_ready(&ports).await;
    let http = admin_client(&data_dir, Duration::from_secs(30));
    // A model in production before the faults, on a dataset of its own: after them a drift
    // must still close the loop.
    let mut traffic = Traffic::new(http.clone(), &ports, LOOP, seed);
    traffic.first_version().await;
    let url = |service: &str, path: &str| ports.url(service, path);
    post(
        &http,
        &url("ingestion", "/v1/datasets"),
        &payments_dataset(DATASET, "faults"),
    )
    .await;
    post(
        &http,
        &url("feature", "/v1/feature-views"),
        &json!({"name": VIEW, "source": DATASET, "entity_key": "customer_id",
                "event_time": "ts", "allowed_lateness": "1h", "features": [{"name": "amount"}],
                "aggregations": [
                    {"name": "payments", "function": "count", "window": "30d"},
                    {"name": "amount_sum", "column": "amount", "function": "sum", "window": "30d"}]}),
    )
    .await;

    // The stream: every event a distinct id, all within the windows.
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let events: Arc<Vec<Value>> = Arc::new(
        (0..total)
            .map(|i| {
                json!({"txn_id": format!("t-{i}"), "customer_id": customer(i),
                       "amount": amount(i), "ts": t0 + i as i64})
            })
            .collect(),
    );
    let batches: Arc<Mutex<Queue>> = Arc::new(Mutex::new(
        (0..total)
            .collect::<Vec<_>>()
            .chunks(BATCH)
            .map(<[usize]>::to_vec)
            .enumerate()
            .collect(),
    ));
    let paced_from = tokio::time::Instant::now();
    let seen = Arc::new(Mutex::new(Seen {
        accepted: vec![false; total],
        ..Default::default()
    }));
    let done = Arc::new(AtomicUsize::new(0));
    let events_url = url("ingestion", &format!("/v1/datasets/{DATASET}/events"));
    let senders: Vec<_> = (0..SENDERS)
        .map(|_| {
            let (http, url, events) = (http.clone(), events_url.clone(), events.clone());
            let (batches, seen, done) = (batches.clone(), seen.clone(), done.clone());
            tokio::spawn(async move {
                loop {
                    let Some((n, batch)) = batches.lock().unwrap().pop_front() else {
                        return;
                    };
                    // The offered load is paced, so the faults fall within the stream.
                    let due = Duration::from_secs_f64((n * BATCH) as f64 / rate);
                    tokio::time::sleep_until(paced_from + due).await;
                    send_until_accepted(&http, &url, &events, batch, &seen, &done).await;
                }
            })
        })
        .collect();

    // The faults, spread over the stream: each service killed `kills_each` times in a
    // random order, the broker once half-way.
    let mut schedule: Vec<&str> = KILLED
        .iter()
        .flat_map(|s| std::iter::repeat_n(*s, kills_each))
        .collect();
    schedule.shuffle(&mut rng);
    schedule.insert(schedule.len() / 2, "broker");
    let mut kills: HashMap<&str, usize> = HashMap::new();
    let started = Instant::now();
    for (n, target) in schedule.iter().enumerate() {
        // Kill n comes once (n + 1) / (kills + 1) of the stream is accepted, give or take.
        let jitter = rng.gen_range(0..total / (schedule.len() + 1) / 2 + 1);
        let at = (n + 1) * total / (schedule.len() + 1) + jitter;
        while done.load(Ordering::Relaxed) < at.min(total - 1) {
            assert!(
                started.elapsed() < LIMIT,
                "the stream stalled before kill {n}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        kill(pid, target).await;
        println!(
            "faults: killed {target} at {} of {total} accepted, {:.1} s in",
            done.load(Ordering::Relaxed),
            started.elapsed().as_secs_f64()
        );
        *kills.entry(target).or_default() += 1;
    }
    for sender in senders {
        sender.await.expect("sender");
    }
    let stream_seconds = started.elapsed().as_secs_f64();
    let (refusals, retry_after) = {
        let seen = seen.lock().unwrap();
        assert!(
            seen.accepted.iter().all(|a| *a),
            "every event ends accepted"
        );
        (seen.refusals.clone(), seen.retry_after)
    };
    println!(
        "faults: {total} events accepted in {stream_seconds:.1} s through kills {kills:?}; refusals by status (0: no answer) {refusals:?}, 503 with Retry-After {retry_after}"
    );
    wait_until_ready(&ports).await;

    // The raw topic: each event exactly once.
    let kafka = KafkaConfig::with_bootstrap(ports.bootstrap());
    let topic = format!("raw.{DATASET}");
    let mut copies: HashMap<String, usize> = HashMap::new();
    let mut positions_of: HashMap<String, Vec<(i32, i64)>> = HashMap::new();
    for partition in 0..2 {
        let records = mlops_kafka::read_records(
            &kafka,
            &topic,
            partition,
            ReadFrom::Start,
            Duration::from_secs(120),
        )
        .await
        .expect("read the raw topic back");
        for record in records {
            let id = record
                .header(mlops_events::topics::EVENT_ID_HEADER)
                .map(|id| String::from_utf8_lossy(id).into_owned())
                .expect("every raw record names its event");
            positions_of
                .entry(id.clone())
                .or_default()
                .push((record.partition, record.offset));
            *copies.entry(id).or_default() += 1;
        }
    }
    let doubled: Vec<_> = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .take(5)
        .map(|(id, _)| (id, &positions_of[id]))
        .collect();
    assert!(doubled.is_empty(), "events written twice: {doubled:?}");
    let missing: Vec<usize> = (0..total)
        .filter(|i| !copies.contains_key(&format!("t-{i}")))
        .take(5)
        .collect();
    assert!(
        missing.is_empty(),
        "accepted events missing from the raw topic: {missing:?}"
    );
    assert_eq!(copies.len(), total, "the raw topic holds only these events");

    // The online store: per customer, the count and sum of exactly its events.
    let mut expected: HashMap<String, (u64, f64)> = HashMap::new();
    for i in 0..total {
        let entry = expected.entry(customer(i)).or_default();
        entry.0 += 1;
        entry.1 += amount(i);
    }
    let ids: Vec<String> = (0..CUSTOMERS.min(total))
        .map(|c| format!("c-{c}"))
        .collect();
    let lookup = url(
        "feature",
        &format!("/v1/feature-views/{VIEW}/entities:lookup"),
    );
    let online = mlops_testkit::until("the online store counts every event", LIMIT, async || {
        let answer = http
            .post(&lookup)
            .json(&json!({"entity_ids": ids}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = answer.json().await.map_err(|e| e.to_string())?;
        let results = body["results"].as_array().cloned().unwrap_or_default();
        let counted: u64 = results
            .iter()
            .filter_map(|r| r["features"]["payments"].as_f64())
            .map(|c| c as u64)
            .sum();
        assert!(
            counted <= total as u64,
            "the online store counts {counted} of {total} events: some twice"
        );
        (counted == total as u64)
            .then_some(results)
            .ok_or(format!("{counted} of {total} events counted"))
    })
    .await;
    for row in &online {
        let id = row["entity_id"].as_str().unwrap();
        let (count, sum) = expected[id];
        assert_eq!(
            row["features"]["payments"].as_f64(),
            Some(count as f64),
            "{row}"
        );
        let online_sum = row["features"]["amount_sum"].as_f64().unwrap();
        assert!(
            (online_sum - sum).abs() < 1e-6 * sum.max(1.0),
            "{row}: sum {sum}"
        );
    }

    // The offline store: every raw record once, and its latest row per customer is what
    // the online store serves.
    let store = feature::store::FeatureStore::open(
        &data_dir
            .join("feature")
            .join("feature-store")
            .display()
            .to_string(),
    )
    .expect("the feature store");
    let offline = store
        .read_frames(&format!("offline/{VIEW}/v1/"))
        .await
        .expect("read the offline store")
        .expect("offline rows");
    let positions = offline
        .clone()
        .lazy()
        .group_by([col("source_partition"), col("source_offset")])
        .agg([
            col("revision").n_unique().alias("revisions"),
            len().alias("rows"),
        ])
        .collect()
        .unwrap();
    assert_eq!(
        positions.height(),
        total,
        "one source record per event in the offline store"
    );
    let rows = positions
        .column("rows")
        .unwrap()
        .cast(&DataType::UInt64)
        .unwrap();
    let revisions = positions
        .column("revisions")
        .unwrap()
        .cast(&DataType::UInt64)
        .unwrap();
    let repeated = rows.u64().unwrap().sum().unwrap() - revisions.u64().unwrap().sum().unwrap();
    assert_eq!(
        repeated, 0,
        "offline rows written twice (same record, same revision)"
    );
    let latest = feature::online::latest_per_entity(offline).unwrap();
    let by_entity: HashMap<String, (f64, f64)> = {
        let entity = latest.column("entity_id").unwrap().str().unwrap().clone();
        let count = latest
            .column("payments")
            .unwrap()
            .cast(&DataType::Float64)
            .unwrap();
        let sum = latest
            .column("amount_sum")
            .unwrap()
            .cast(&DataType::Float64)
            .unwrap();
        let (count, sum) = (count.f64().unwrap().clone(), sum.f64().unwrap().clone());
        (0..latest.height())
            .map(|i| {
                (
                    entity.get(i).unwrap().to_owned(),
                    (
                        count.get(i).unwrap_or(f64::NAN),
                        sum.get(i).unwrap_or(f64::NAN),
                    ),
                )
            })
            .collect()
    };
    for row in &online {
        let id = row["entity_id"].as_str().unwrap();
        let offline = by_entity[id];
        assert_eq!(
            (
                row["features"]["payments"].as_f64().unwrap(),
                row["features"]["amount_sum"].as_f64().unwrap()
            ),
            offline,
            "online {id} equals the offline store's latest row"
        );
    }
    println!("faults: raw topic, offline store and online store each hold the {total} events once");

    // The loop after the kills: drift detected on the restarted monitor, one retraining by
    // the restarted training service, version 2 in canary on the restarted serving
    // processes, promoted by the monitor's verdict.
    let (drift, canary_seen, promoted) = traffic.drift_to_promotion(2).await;
    assert_eq!(
        traffic.drift_runs().await.len(),
        1,
        "exactly one retraining"
    );
    let detected_at = drift["detected_at"].as_i64().unwrap_or(canary_seen);
    println!(
        "faults: after the kills, drift -> version 2 in canary {:.1} s -> promoted {:.1} s",
        (canary_seen - detected_at) as f64 / 1000.0,
        (promoted - canary_seen) as f64 / 1000.0
    );
}
