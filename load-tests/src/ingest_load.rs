//! Drives an ingestion API (`POST /v1/datasets/{name}/events`) with single-event or batch
//! requests from concurrent keep-alive connections for a fixed time, and reports events/s,
//! latency percentiles (HDR histogram) and errors. The same contract is served by the
//! platform and by the peer in `peers/`, so the two are measured the same way.

use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use mlops_load_tests::Tally;
use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    Single,
    Batch,
}

#[derive(Debug, Parser)]
#[command(about = "Load generator for the ingestion API")]
struct Args {
    /// Base URL of the API, e.g. http://127.0.0.1:8080
    #[arg(long)]
    url: String,
    /// For an https URL: the CA certificate (PEM) to trust, e.g. the one `mlops up --tls`
    /// writes to `<data dir>/tls/ca.pem`.
    #[arg(long)]
    ca: Option<std::path::PathBuf>,
    /// Dataset to declare and send to.
    #[arg(long, default_value = "bench")]
    dataset: String,
    #[arg(long, value_enum, default_value_t = Mode::Single)]
    mode: Mode,
    /// Events per request in batch mode.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Concurrent connections.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of load after the warm-up.
    #[arg(long, default_value_t = 20)]
    duration: u64,
    /// Seconds of warm-up, not measured.
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// The server process under test (its descendants included): its CPU seconds over
    /// the measured window are reported, per 1,000 events.
    #[arg(long)]
    server_pid: Option<u32>,
    /// Declare `txn_id` as the dataset's event id, so that every event also goes through
    /// the idempotency store (a lookup and a record per request).
    #[arg(long)]
    event_id: bool,
    /// A label for the report line.
    #[arg(long, default_value = "target")]
    label: String,
}

/// The dataset both implementations serve: five typed fields and one rule.
fn dataset(name: &str, event_id: bool) -> Value {
    let mut spec = json!({
        "name": name,
        "schema": {"type": "record", "name": "Payment", "namespace": "bench", "fields": [
            {"name": "txn_id", "type": "string"},
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "currency", "type": "string"},
            {"name": "ts", "type": "long"}
        ]},
        "key": "customer_id", "event_time": "ts", "partitions": 3,
        "rules": {"amount": {"min": 0}}
    });
    if event_id {
        spec["event_id"] = json!("txn_id");
    }
    spec
}

fn event(worker: usize, seq: u64) -> Value {
    json!({"txn_id": format!("{worker}-{seq}"), "customer_id": format!("c-{}", seq % 1000),
           "amount": (seq % 500) as f64 + 0.5, "currency": "AED", "ts": 1_795_687_200_000_u64 + seq})
}

async fn worker(
    client: reqwest::Client,
    args: &Args,
    id: usize,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Tally> {
    let url = format!("{}/v1/datasets/{}/events", args.url, args.dataset);
    let mut tally = Tally::new()?;
    let mut seq = 0u64;
    while Instant::now() < stop_at {
        let (body, count) = match args.mode {
            Mode::Single => {
                seq += 1;
                (event(id, seq), 1)
            }
            Mode::Batch => {
                let events: Vec<Value> = (0..args.batch_size)
                    .map(|_| {
                        seq += 1;
                        event(id, seq)
                    })
                    .collect();
                (Value::Array(events), args.batch_size as u64)
            }
        };
        let started = Instant::now();
        let answer = client
            .post(&url)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        let ok = match answer {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                body["accepted"].as_u64() == Some(count)
            }
            _ => false,
        };
        if started < warm_until {
            continue;
        }
        tally.record(started, ok.then_some(count))?;
    }
    Ok(tally)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut client = reqwest::Client::builder()
        .default_headers(mlops_load_tests::auth_headers())
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60));
    if let Some(ca) = &args.ca {
        for cert in reqwest::Certificate::from_pem_bundle(&std::fs::read(ca)?)? {
            client = client.add_root_certificate(cert);
        }
    }
    let client = client.build()?;
    let declared = client
        .post(format!("{}/v1/datasets", args.url))
        .header("content-type", "application/json")
        .body(dataset(&args.dataset, args.event_id).to_string())
        .send()
        .await?;
    anyhow::ensure!(
        declared.status().is_success(),
        "declaring the dataset failed: {} {}",
        declared.status(),
        declared.text().await.unwrap_or_default()
    );

    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    let stop_at = warm_until + Duration::from_secs(args.duration);
    // The server's CPU over exactly the measured window.
    let server_cpu = async {
        let pid = args.server_pid?;
        tokio::time::sleep_until(warm_until.into()).await;
        let before = mlops_load_tests::cpu_seconds(pid);
        tokio::time::sleep_until(stop_at.into()).await;
        Some(mlops_load_tests::cpu_seconds(pid) - before)
    };
    let (tallies, server_cpu) = tokio::join!(
        futures::future::join_all((0..args.concurrency).map(|id| worker(
            client.clone(),
            &args,
            id,
            warm_until,
            stop_at
        )),),
        server_cpu
    );
    let all = Tally::merge(tallies)?;
    let report = json!({
        "label": args.label,
        "mode": format!("{:?}", args.mode).to_lowercase(),
        "batch_size": if args.mode == Mode::Batch { args.batch_size } else { 1 },
        "concurrency": args.concurrency,
        "seconds": args.duration,
        "requests": all.requests(),
        "events": all.ok,
        "events_per_second": (all.ok as f64 / args.duration as f64).round(),
        "p50_ms": all.ms(0.5),
        "p99_ms": all.ms(0.99),
        "p999_ms": all.ms(0.999),
        "errors": all.errors,
        "server_cpu_seconds": server_cpu,
        "cpu_seconds_per_1000_events": server_cpu.map(|cpu| 1000.0 * cpu / all.ok.max(1) as f64),
    });
    println!("{report}");
    Ok(())
}
