//! Drives an Open Inference Protocol v2 server (`POST /v2/models/{name}/infer`) with one
//! request body from concurrent keep-alive connections for a fixed time, and reports
//! requests/s, rows/s, latency percentiles (HDR histogram) and errors. The platform's
//! serving and MLServer take the same body, so both are measured the same way.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use clap::Parser;
use mlops_load_tests::Tally;
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Load generator for Open Inference Protocol v2 servers")]
struct Args {
    /// The infer URL, e.g. http://127.0.0.1:8082/v2/models/bench_lr/infer
    #[arg(long)]
    url: String,
    /// A file holding the request body (JSON).
    #[arg(long)]
    body: PathBuf,
    /// Rows in each request (for rows/s).
    #[arg(long, default_value_t = 1)]
    rows: u64,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
    /// Seconds of load after the warm-up.
    #[arg(long, default_value_t = 15)]
    duration: u64,
    #[arg(long, default_value_t = 3)]
    warmup: u64,
    /// A label for the report line.
    #[arg(long, default_value = "target")]
    label: String,
    /// Requests per second offered in all (each connection paced to its share); as fast
    /// as answers come when absent. A fixed rate compares what each server costs for the
    /// same work below saturation.
    #[arg(long)]
    rate: Option<f64>,
}

async fn worker(
    client: reqwest::Client,
    args: &Args,
    body: String,
    warm_until: Instant,
    stop_at: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let mut pace = args.rate.map(|rate| {
        let mut interval =
            tokio::time::interval(Duration::from_secs_f64(args.concurrency as f64 / rate));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval
    });
    while Instant::now() < stop_at {
        if let Some(pace) = &mut pace {
            pace.tick().await;
        }
        let started = Instant::now();
        let answer = client
            .post(&args.url)
            .header("content-type", "application/json")
            .body(body.clone())
            .send()
            .await;
        let ok = match answer {
            Ok(response) if response.status().is_success() => {
                let body: Value = response.json().await.unwrap_or(Value::Null);
                body["outputs"].as_array().is_some_and(|o| !o.is_empty())
            }
            _ => false,
        };
        if started < warm_until {
            continue;
        }
        tally.record(started, ok.then_some(1))?;
    }
    Ok(tally)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let body = std::fs::read_to_string(&args.body)?;
    let client = reqwest::Client::builder()
        .default_headers(mlops_load_tests::auth_headers())
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;
    let warm_until = Instant::now() + Duration::from_secs(args.warmup);
    let stop_at = warm_until + Duration::from_secs(args.duration);
    let tallies = futures::future::join_all(
        (0..args.concurrency)
            .map(|_| worker(client.clone(), &args, body.clone(), warm_until, stop_at)),
    )
    .await;
    let all = Tally::merge(tallies)?;
    let (ok, seconds) = (all.ok, args.duration as f64);
    println!(
        "{}",
        json!({
            "label": args.label,
            "rows_per_request": args.rows,
            "concurrency": args.concurrency,
            "offered_rate": args.rate,
            "seconds": args.duration,
            "requests": ok,
            "requests_per_second": (ok as f64 / seconds).round(),
            "rows_per_second": (ok as f64 * args.rows as f64 / seconds).round(),
            "p50_ms": all.ms(0.5),
            "p99_ms": all.ms(0.99),
            "p999_ms": all.ms(0.999),
            "errors": all.errors,
        })
    );
    Ok(())
}
