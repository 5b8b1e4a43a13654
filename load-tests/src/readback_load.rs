//! The embedded-default load test: N events over HTTP into one dataset in batches, then
//! the feature view's stream job and an independent consumer read everything back from
//! offset 0, while a prober times a metadata request and `GET /readyz` every second.
//! Run against `mlops up` on the embedded broker and on Apache Kafka by
//! `load-tests/embedded.sh`; prints one JSON line.
//!
//! Reported: ingest events/s over the whole run, time from the last acknowledgement until
//! each reader has every record, the worst metadata and readiness latencies, consumer
//! group rebalances of the view, and the broker's CPU seconds (from `/proc/<pid>/stat`).

use std::{
    collections::{BTreeMap, HashSet},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use clap::Parser;
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(about = "Ingest N events, then time their read-back by the feature view and a consumer")]
struct Args {
    /// Ingestion service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    ingestion: String,
    /// Feature service base URL.
    #[arg(long, default_value = "http://127.0.0.1:8082")]
    feature: String,
    /// Kafka bootstrap servers of the platform's broker.
    #[arg(long, default_value = "127.0.0.1:9092")]
    bootstrap: String,
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    #[arg(long, default_value_t = 100)]
    batch_size: u64,
    /// Concurrent HTTP connections posting batches.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// The broker's process id, for its CPU seconds.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// How long the readers may take after the last acknowledgement.
    #[arg(long, default_value_t = 600)]
    readback_timeout: u64,
    #[arg(long, default_value = "embedded")]
    label: String,
}

const PARTITIONS: i32 = 3;

/// CPU seconds (user + system) of a process and its waited-for children, from
/// `/proc/<pid>/stat` fields 14-17, in clock ticks of 1/100 s.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces; fields resume after its ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11..15]
        .iter()
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Some(ticks as f64 / 100.0)
}

/// Worst latencies the prober saw, in milliseconds, and how many probes failed.
#[derive(Debug, Default)]
struct Probes {
    metadata_worst_ms: f64,
    readyz_worst_ms: f64,
    failures: u64,
    count: u64,
    view_members: HashSet<String>,
}

fn declare(client: &reqwest::blocking::Client, url: &str, body: &Value) -> anyhow::Result<Value> {
    let response = client.post(url).json(body).send()?;
    let status = response.status();
    let answer: Value = response.json().unwrap_or(Value::Null);
    anyhow::ensure!(status.is_success(), "{url}: {status} {answer}");
    Ok(answer)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let run = format!("load{}", std::process::id());
    let dataset = format!("{run}_payments");
    let view = format!("{run}_spend");
    let http = reqwest::blocking::Client::builder()
        .default_headers(mlops_load_tests::auth_headers())
        .timeout(Duration::from_secs(60))
        .build()?;
    let declared = declare(
        &http,
        &format!("{}/v1/datasets", args.ingestion),
        &json!({
            "name": dataset, "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
            "partitions": PARTITIONS, "rules": {"amount": {"min": 0}},
            "schema": {"type": "record", "name": "Payment", "namespace": "load", "fields": [
                {"name": "txn_id", "type": "string"},
                {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "currency", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
        }),
    )?;
    let topic = declared["topic"]
        .as_str()
        .ok_or_else(|| anyhow::anyhow!("no topic in {declared}"))?
        .to_owned();
    let view_declared = declare(
        &http,
        &format!("{}/v1/feature-views", args.feature),
        &json!({
            "name": view, "source": dataset, "entity_key": "customer_id", "event_time": "ts",
            "allowed_lateness": "1m", "features": [{"name": "amount"}],
            "aggregations": [
                {"name": "payments_1h", "function": "count", "window": "1h"},
                {"name": "amount_sum_1h", "column": "amount", "function": "sum", "window": "1h"}]
        }),
    )?;
    let view_group = format!("feature.view.{view}.v{}", view_declared["version"]);

    let stop = Arc::new(AtomicBool::new(false));
    let probes = Arc::new(Mutex::new(Probes::default()));
    let prober = {
        let (stop, probes, args_bootstrap) = (stop.clone(), probes.clone(), args.bootstrap.clone());
        let readyz = vec![
            format!("{}/readyz", args.ingestion),
            format!("{}/readyz", args.feature),
        ];
        let (topic, view_group) = (topic.clone(), view_group.clone());
        std::thread::spawn(move || {
            prober(
                &args_bootstrap,
                &topic,
                &view_group,
                &readyz,
                &stop,
                &probes,
            )
        })
    };

    let cpu_start = args.broker_pid.and_then(cpu_seconds);
    let started = Instant::now();
    let ends = ingest(&args, &dataset)?;
    let ingest_seconds = started.elapsed().as_secs_f64();
    let acked_at = Instant::now();
    let accepted: u64 = ends.values().map(|&end| end as u64).sum();

    // Both readers run against the same clock: the independent consumer starts now at
    // offset 0; the view has been reading since the first event.
    let reader = {
        let (bootstrap, topic, ends) = (args.bootstrap.clone(), topic.clone(), ends.clone());
        let limit = Duration::from_secs(args.readback_timeout);
        std::thread::spawn(move || read_all(&bootstrap, &topic, &ends, limit))
    };
    let view_done = wait_for_group(
        &args.bootstrap,
        &view_group,
        &topic,
        &ends,
        acked_at + Duration::from_secs(args.readback_timeout),
    );
    let view_seconds = view_done.map(|at| at.duration_since(acked_at).as_secs_f64());
    let read = reader
        .join()
        .map_err(|_| anyhow::anyhow!("reader panicked"))??;
    let consumer_seconds = read
        .done
        .map(|at| at.duration_since(acked_at).as_secs_f64());
    stop.store(true, Ordering::SeqCst);
    let _ = prober.join();
    let cpu_end = args.broker_pid.and_then(cpu_seconds);
    let probes = probes.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;

    let report = json!({
        "label": args.label,
        "events_sent": args.events,
        "events_accepted": accepted,
        "batch_size": args.batch_size,
        "concurrency": args.concurrency,
        "ingest_seconds": round(ingest_seconds),
        "ingest_events_per_second": (accepted as f64 / ingest_seconds).round(),
        "view_caught_up_seconds_after_last_ack": view_seconds.map(round),
        "consumer_read_all_seconds_after_last_ack": consumer_seconds.map(round),
        "consumer_records": read.records,
        "consumer_duplicates": read.duplicates,
        "metadata_worst_ms": round(probes.metadata_worst_ms),
        "readyz_worst_ms": round(probes.readyz_worst_ms),
        "probes": probes.count,
        "probe_failures": probes.failures,
        "view_group_members_seen": probes.view_members.len(),
        "broker_cpu_seconds": match (cpu_start, cpu_end) {
            (Some(a), Some(b)) => Some(round(b - a)),
            _ => None,
        },
        "broker_cpu_seconds_per_1000_events": match (cpu_start, cpu_end) {
            (Some(a), Some(b)) if accepted > 0 => Some(round((b - a) * 1000.0 / accepted as f64)),
            _ => None,
        },
    });
    println!("{report}");
    let complete = read.records == accepted && read.duplicates == 0 && view_seconds.is_some();
    anyhow::ensure!(complete, "not every accepted event was read back: {report}");
    Ok(())
}

fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Posts the events in batches from concurrent connections; returns, per partition, the
/// offset after the last acknowledged event. A refused request (429/503) is retried after
/// a pause, so every event is eventually accepted once.
fn ingest(args: &Args, dataset: &str) -> anyhow::Result<BTreeMap<i32, i64>> {
    let batches = args.events.div_ceil(args.batch_size);
    let next = AtomicU64::new(0);
    let ends = Mutex::new(BTreeMap::<i32, i64>::new());
    let url = format!("{}/v1/datasets/{dataset}/events", args.ingestion);
    std::thread::scope(|scope| -> anyhow::Result<()> {
        let workers: Vec<_> = (0..args.concurrency)
            .map(|_| {
                scope.spawn(|| -> anyhow::Result<()> {
                    let http = reqwest::blocking::Client::builder()
                        .default_headers(mlops_load_tests::auth_headers())
                        .timeout(Duration::from_secs(120))
                        .build()?;
                    loop {
                        let batch = next.fetch_add(1, Ordering::SeqCst);
                        if batch >= batches {
                            return Ok(());
                        }
                        let first = batch * args.batch_size;
                        let last = (first + args.batch_size).min(args.events);
                        let events: Vec<Value> = (first..last).map(event).collect();
                        let body = Value::Array(events).to_string();
                        let answer = loop {
                            let response = http
                                .post(&url)
                                .header("content-type", "application/json")
                                .body(body.clone())
                                .send()?;
                            let status = response.status();
                            if status.as_u16() == 429 || status.as_u16() == 503 {
                                std::thread::sleep(Duration::from_millis(200));
                                continue;
                            }
                            let answer: Value = response.json()?;
                            anyhow::ensure!(status.is_success(), "{status}: {answer}");
                            break answer;
                        };
                        let mut ends = ends.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
                        for result in answer["results"].as_array().into_iter().flatten() {
                            if let (Some(p), Some(o)) =
                                (result["partition"].as_i64(), result["offset"].as_i64())
                            {
                                let end = ends.entry(p as i32).or_default();
                                *end = (*end).max(o + 1);
                            }
                        }
                    }
                })
            })
            .collect();
        for worker in workers {
            worker
                .join()
                .map_err(|_| anyhow::anyhow!("worker panicked"))??;
        }
        Ok(())
    })?;
    ends.into_inner().map_err(|_| anyhow::anyhow!("poisoned"))
}

/// Event `n`: 5,000 customers, 100 events a second of event time, so that batches
/// posted concurrently stay well inside the view's allowed lateness (nothing is late).
fn event(n: u64) -> Value {
    json!({"txn_id": format!("t{n}"), "customer_id": format!("c-{}", n % 5000),
           "amount": (n % 500) as f64 + 0.5, "currency": "AED",
           "ts": 1_795_651_200_000_u64 + n * 10})
}

fn client_config(bootstrap: &str) -> ClientConfig {
    // An independent consumer, deliberately not the platform's own Kafka client.
    #[allow(clippy::disallowed_methods)]
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000");
    config
}

struct Read {
    records: u64,
    duplicates: u64,
    done: Option<Instant>,
}

/// Reads every partition from offset 0 with a fresh, group-less consumer until each has
/// reached its end offset.
fn read_all(
    bootstrap: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    limit: Duration,
) -> anyhow::Result<Read> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", format!("readback-{}", std::process::id()))
        .create()?;
    let mut assignment = TopicPartitionList::new();
    for partition in ends.keys() {
        assignment.add_partition_offset(topic, *partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let deadline = Instant::now() + limit;
    let mut seen: BTreeMap<i32, HashSet<i64>> = BTreeMap::new();
    let (mut records, mut duplicates) = (0u64, 0u64);
    let complete = |seen: &BTreeMap<i32, HashSet<i64>>| {
        ends.iter()
            .all(|(p, end)| seen.get(p).map_or(0, |s| s.len() as i64) >= *end)
    };
    while !complete(&seen) {
        if Instant::now() > deadline {
            return Ok(Read {
                records,
                duplicates,
                done: None,
            });
        }
        if let Some(message) = consumer.poll(Duration::from_millis(200)) {
            let message = message?;
            if seen
                .entry(message.partition())
                .or_default()
                .insert(message.offset())
            {
                records += 1;
            } else {
                duplicates += 1;
            }
        }
    }
    Ok(Read {
        records,
        duplicates,
        done: Some(Instant::now()),
    })
}

/// Waits until `group` has committed every partition's end offset.
fn wait_for_group(
    bootstrap: &str,
    group: &str,
    topic: &str,
    ends: &BTreeMap<i32, i64>,
    deadline: Instant,
) -> Option<Instant> {
    let consumer: BaseConsumer = client_config(bootstrap)
        .set("group.id", group)
        .create()
        .ok()?;
    let mut partitions = TopicPartitionList::new();
    for partition in ends.keys() {
        partitions.add_partition(topic, *partition);
    }
    while Instant::now() < deadline {
        if let Ok(committed) =
            consumer.committed_offsets(partitions.clone(), Duration::from_secs(10))
        {
            let done = ends.iter().all(|(p, end)| {
                matches!(
                    committed.find_partition(topic, *p).map(|e| e.offset()),
                    Some(Offset::Offset(o)) if o >= *end
                )
            });
            if done {
                return Some(Instant::now());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    None
}

/// Every second: a metadata request for the topic, `GET /readyz` of each URL, and the
/// members of the view's group (a new member id means the group rebalanced after a
/// member was dropped).
fn prober(
    bootstrap: &str,
    topic: &str,
    view_group: &str,
    readyz: &[String],
    stop: &AtomicBool,
    probes: &Mutex<Probes>,
) {
    let Ok(consumer) = client_config(bootstrap)
        .set("group.id", format!("prober-{}", std::process::id()))
        .create::<BaseConsumer>()
    else {
        return;
    };
    let Ok(http) = reqwest::blocking::Client::builder()
        .default_headers(mlops_load_tests::auth_headers())
        .timeout(Duration::from_secs(30))
        .build()
    else {
        return;
    };
    while !stop.load(Ordering::SeqCst) {
        let tick = Instant::now();
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(30));
        let metadata_ms = tick.elapsed().as_secs_f64() * 1000.0;
        let mut readyz_ms: f64 = 0.0;
        let mut failed = metadata.is_err();
        for url in readyz {
            let t = Instant::now();
            let ok = http.get(url).send().is_ok_and(|r| r.status().is_success());
            readyz_ms = readyz_ms.max(t.elapsed().as_secs_f64() * 1000.0);
            failed |= !ok;
        }
        let members: Vec<String> = consumer
            .fetch_group_list(Some(view_group), Duration::from_secs(5))
            .map(|list| {
                list.groups()
                    .iter()
                    .flat_map(|g| g.members().iter().map(|m| m.id().to_owned()))
                    .collect()
            })
            .unwrap_or_default();
        if let Ok(mut p) = probes.lock() {
            p.metadata_worst_ms = p.metadata_worst_ms.max(metadata_ms);
            p.readyz_worst_ms = p.readyz_worst_ms.max(readyz_ms);
            p.failures += u64::from(failed);
            p.count += 1;
            p.view_members.extend(members);
        }
        if let Some(rest) = Duration::from_secs(1).checked_sub(tick.elapsed()) {
            std::thread::sleep(rest);
        }
    }
}
