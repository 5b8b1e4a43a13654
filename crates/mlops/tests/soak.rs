//! Soak: `mlops up` under a steady stream of events and scored requests for a while, its
//! processes sampled every few seconds. After the warm-up (the view's window filled), every
//! process keeps its memory (RSS within 10 %) and its file descriptors, and the feature
//! view keeps up (what it has not processed does not grow).
//!
//! `MLOPS_SOAK_SECONDS` (default 120, of which the first half is warm-up; the full run is
//! 1800) and `MLOPS_SOAK_RATE` (events per second, default 500: about half of what a debug
//! build takes in on two shared cores) size a run.

// Tests drive the platform from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{collections::BTreeMap, time::Duration};

use serde_json::{Value, json};
use support::{
    Ports, admin_client, children_of, env_number, launch, payments_dataset, post, wait_until_ready,
};

const DATASET: &str = "payments";
const VIEW: &str = "spend";
const CUSTOMERS: usize = 500;
const BATCH: usize = 50;
/// How often the processes are sampled.
const SAMPLE_EVERY: Duration = Duration::from_secs(5);

/// Per process (by what it runs): resident memory (KiB) and open file descriptors.
type Footprints = BTreeMap<String, (u64, usize)>;

/// Resident memory (KiB) and open file descriptors of `pid` and its descendants (the
/// broker's JVM under `mlops broker`).
fn footprint(pid: u32) -> Option<(u64, usize)> {
    let (mut rss, mut fds) = footprint_of(pid)?;
    for child in children_of(pid) {
        let (child_rss, child_fds) = footprint(child).unwrap_or_default();
        rss += child_rss;
        fds += child_fds;
    }
    Some((rss, fds))
}

fn footprint_of(pid: u32) -> Option<(u64, usize)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some((rss, fds))
}

/// The launcher's children by what they run (`broker`, or the service's name).
fn processes(launcher: u32) -> BTreeMap<String, u32> {
    children_of(launcher)
        .into_iter()
        .filter_map(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            let args: Vec<String> = cmdline
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            let args: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
            let name = match args[..] {
                ["service", name] => name.to_owned(),
                ["broker", ..] => "broker".to_owned(),
                _ => return None,
            };
            Some((name, pid))
        })
        .collect()
}

/// Records of the view's source not yet processed: the source's end offsets (listed by
/// the broker) minus the view's checkpointed positions.
async fn view_backlog(data_dir: &std::path::Path, ports: &Ports) -> i64 {
    let kafka = mlops_kafka::KafkaConfig::with_bootstrap(ports.bootstrap());
    let ends = mlops_kafka::end_offsets(&kafka, &format!("raw.{DATASET}"), Duration::from_secs(30))
        .await
        .expect("the source's end offsets");
    let checkpoint = data_dir.join(format!(
        "feature/feature-store/state/views/{VIEW}/v1/checkpoint.json"
    ));
    let checkpoint: Value = std::fs::read(&checkpoint)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .unwrap_or_default();
    ends.iter()
        .map(|(partition, end)| {
            let next = checkpoint["offsets"][format!("raw.{DATASET}/{partition}")]
                .as_i64()
                .unwrap_or(0);
            (end - next).max(0)
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_steady_stream_keeps_memory_descriptors_and_lag_flat() {
    let seconds = env_number("MLOPS_SOAK_SECONDS", 120);
    let rate = env_number("MLOPS_SOAK_RATE", 500).max(1) as f64;
    let warm_up = Duration::from_secs(seconds / 2);
    let dir = mlops_testkit::temp_dir();
    let data_dir = dir.path().join("data");
    let ports = Ports::pick();
    let launcher = launch(&data_dir, &ports, None);
    wait_until_ready(&ports).await;
    let http = admin_client(&data_dir, Duration::from_secs(30));
    post(
        &http,
        &ports.url("ingestion", "/v1/datasets"),
        &payments_dataset(DATASET, "soak"),
    )
    .await;
    // A window shorter than the warm-up: the view's state is full before measuring starts.
    let window = (warm_up.as_secs() / 3).max(10);
    post(
        &http,
        &ports.url("feature", "/v1/feature-views"),
        &json!({"name": VIEW, "source": DATASET, "entity_key": "customer_id",
                "event_time": "ts", "allowed_lateness": "5s", "features": [{"name": "amount"}],
                "aggregations": [
                    {"name": "payments", "function": "count", "window": format!("{window}s")},
                    {"name": "amount_sum", "column": "amount", "function": "sum",
                     "window": format!("{window}s")}]}),
    )
    .await;

    let events_url = ports.url("ingestion", &format!("/v1/datasets/{DATASET}/events"));
    let lookup_url = ports.url("feature", &format!("/v1/feature-views/{VIEW}/entities/c-1"));
    let started = tokio::time::Instant::now();
    let end = started + Duration::from_secs(seconds);
    let mut next_sample = started + warm_up;
    let mut sent = 0usize;
    let mut samples: Vec<(Footprints, i64)> = Vec::new();
    let interval = Duration::from_secs_f64(BATCH as f64 / rate);
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while tokio::time::Instant::now() < end {
        tick.tick().await;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let events: Vec<Value> = (sent..sent + BATCH)
            .map(|i| {
                json!({"txn_id": format!("t-{i}"), "customer_id": format!("c-{}", i % CUSTOMERS),
                       "amount": (i % 89) as f64, "ts": now})
            })
            .collect();
        let answer = post(&http, &events_url, &Value::Array(events)).await;
        assert_eq!(answer["accepted"], BATCH, "{answer}");
        sent += BATCH;
        // Reads beside the writes, as a serving path would.
        let read = http.get(&lookup_url).send().await.expect("lookup");
        assert!(read.status().is_success() || read.status() == reqwest::StatusCode::NOT_FOUND);
        if tokio::time::Instant::now() >= next_sample {
            let footprints: Footprints = processes(launcher.id())
                .into_iter()
                .filter_map(|(name, pid)| Some((name, footprint(pid)?)))
                .collect();
            samples.push((footprints, view_backlog(&data_dir, &ports).await));
            next_sample += SAMPLE_EVERY;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "soak: {sent} events in {elapsed:.0} s ({:.0}/s), {} samples after a {} s warm-up",
        sent as f64 / elapsed,
        samples.len(),
        warm_up.as_secs()
    );
    assert!(
        samples.len() >= 3,
        "too few samples: lengthen MLOPS_SOAK_SECONDS"
    );
    let (first, first_backlog) = &samples[0];
    let (last, _) = samples.last().unwrap();
    for (name, (rss, fds)) in first {
        let (last_rss, last_fds) = last[name];
        let peak = samples.iter().map(|(s, _)| s[name].0).max().unwrap();
        println!(
            "soak: {name:<10} RSS {} → {} MiB (peak {}), fds {fds} → {last_fds}",
            rss / 1024,
            last_rss / 1024,
            peak / 1024
        );
        assert!(
            last_rss as f64 <= *rss as f64 * 1.10,
            "{name}: RSS grew from {rss} to {last_rss} KiB after the warm-up"
        );
        // A few sockets come and go (broker connections, pooled HTTP clients).
        assert!(
            last_fds <= fds + 8,
            "{name}: file descriptors grew from {fds} to {last_fds}"
        );
    }
    // Lag: sampled at most one micro-batch behind, and not growing.
    let backlogs: Vec<i64> = samples.iter().map(|(_, b)| *b).collect();
    println!("soak: view backlog per sample {backlogs:?}");
    let tolerance = (rate * 2.0) as i64;
    let worst_late = backlogs[backlogs.len() / 2..]
        .iter()
        .copied()
        .max()
        .unwrap();
    assert!(
        worst_late <= first_backlog + tolerance,
        "the view falls behind: backlog {backlogs:?}"
    );
    wait_until_ready(&ports).await;
}
