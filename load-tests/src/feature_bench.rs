//! Benchmark of the feature pipeline and of online lookups, in process.
//!
//! 1. Streams N synthetic payment events (keyed by customer over 3 partitions, arriving up
//!    to ~2 min out of order, a few far past the allowed lateness) through the view pipeline
//!    of a 3-aggregation sliding window (count, sum, mean over 1 h), in micro-batches, and
//!    reports rows/s and the cost per micro-batch. `--write-events` saves the exact events
//!    so that the pandas peer (`peers/pandas_features.py`) computes the same view on them;
//!    both print a checksum of their output so the comparison is of equal work.
//! 2. Fills the online store with the latest vectors and times lookups through the
//!    service's HTTP router, in process (routing, extraction, JSON), one entity per request
//!    and 100 per `entities:lookup`.
//!
//! Prints one JSON line per part.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::body::Body;
use clap::Parser;
use feature::{
    api::{self, App},
    catalog::Catalog,
    online::{OnlineStore, latest_per_entity},
    pipeline::{ENTITY, OFFSET, PARTITION, TIME, ViewPipeline},
    spec::FeatureViewSpec,
    store::FeatureStore,
    stream::StreamSettings,
};
use hdrhistogram::Histogram;
use http_body_util::BodyExt;
use mlops_kafka::{KafkaConfig, Producer};
use mlops_schema::AvroCodec;
use polars::prelude::*;
use serde_json::json;
use tower::ServiceExt;

/// The view both sides compute.
const VIEW: &str = r#"
name = "spend"
source = "payments"
entity_key = "customer"
event_time = "ts"
allowed_lateness = "10m"

[[aggregations]]
name = "count_1h"
function = "count"
window = "1h"

[[aggregations]]
name = "sum_1h"
column = "amount"
function = "sum"
window = "1h"

[[aggregations]]
name = "mean_1h"
column = "amount"
function = "mean"
window = "1h"
"#;

const PARTITIONS: u64 = 3;
/// Mean spacing of event times.
const STEP_MS: i64 = 36;
/// Every this many events, one is two hours behind: past the allowed lateness.
const LATE_EVERY: usize = 100_000;
const T0: i64 = 1_767_225_600_000;

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 1_000_000)]
    events: usize,
    #[arg(long, default_value_t = 10_000)]
    entities: u64,
    /// Events per micro-batch (the service's `batch_max_records` default).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Online lookups to time (0: the pipeline alone).
    #[arg(long, default_value_t = 200_000)]
    lookups: usize,
    /// Also write the events to this Parquet file, for the peer.
    #[arg(long)]
    write_events: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut events = generate(args.events, args.entities)?;
    if let Some(path) = &args.write_events {
        let file = std::fs::File::create(path).with_context(|| format!("{}", path.display()))?;
        ParquetWriter::new(file).finish(&mut events)?;
    }

    let spec = FeatureViewSpec::from_toml(VIEW).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    spec.check().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let mut pipeline = ViewPipeline::new(
        &spec,
        1,
        vec![
            ("customer".into(), DataType::String),
            ("ts".into(), DataType::Int64),
            ("amount".into(), DataType::Float64),
        ],
    )?;
    let features = pipeline.feature_names().to_vec();
    let online = Arc::new(OnlineStore::default());

    let mut batch_micros = Histogram::<u64>::new(3)?;
    // Once the stream's event time has covered the window and the lateness, the buffer
    // is as large as it gets: batches from then on cost what a running service pays.
    let steady_from = ((spec.max_window_ms() + spec.lateness_ms()) / STEP_MS) as usize;
    let mut steady_micros = Histogram::<u64>::new(3)?;
    let (mut steady_events, mut steady_cpu) = (0, 0.0);
    let mut busy = Duration::ZERO;
    // CPU of this process (all polars threads) over the batches only.
    let mut cpu = 0.0;
    let mut checksum = Checksum::default();
    let mut offset = 0;
    let mut revision = 0;
    while offset < events.height() {
        let batch = events.slice(offset as i64, args.batch);
        let steady = offset >= steady_from;
        offset += batch.height();
        revision += 1;
        let size = batch.height();
        let cpu_before = mlops_load_tests::own_cpu_seconds();
        let started = Instant::now();
        let output = pipeline.process(batch, revision)?;
        let took = started.elapsed();
        let spent = mlops_load_tests::own_cpu_seconds() - cpu_before;
        cpu += spent;
        busy += took;
        batch_micros.record(took.as_micros() as u64)?;
        if steady {
            steady_micros.record(took.as_micros() as u64)?;
            steady_events += size;
            steady_cpu += spent;
        }
        checksum.add(&output.rows, output.late.len())?;
        online.apply("spend", 1, &latest_per_entity(output.rows)?, &features)?;
    }
    println!(
        "{}",
        json!({
            "label": "platform-polars",
            "part": "pipeline",
            "events": events.height(),
            "batch_size": args.batch,
            "batches": revision,
            "events_per_s": (events.height() as f64 / busy.as_secs_f64()).round(),
            "seconds": busy.as_secs_f64(),
            "cpu_seconds": cpu,
            "cpu_seconds_per_1000_events": 1000.0 * cpu / events.height().max(1) as f64,
            "batch_ms": {
                "p50": batch_micros.value_at_quantile(0.5) as f64 / 1000.0,
                "p99": batch_micros.value_at_quantile(0.99) as f64 / 1000.0,
                "max": batch_micros.max() as f64 / 1000.0,
            },
            "steady": {
                "batches": steady_micros.len(),
                "batch_ms_p50": steady_micros.value_at_quantile(0.5) as f64 / 1000.0,
                "batch_ms_p99": steady_micros.value_at_quantile(0.99) as f64 / 1000.0,
                "cpu_us_per_event": 1e6 * steady_cpu / steady_events.max(1) as f64,
            },
            "checksum": checksum.to_json(),
        })
    );
    if args.lookups == 0 {
        return Ok(());
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(lookups(online, args.entities, args.lookups))
}

/// Events in arrival order: internal columns, then the source columns the view reads.
fn generate(count: usize, entities: u64) -> anyhow::Result<DataFrame> {
    let mut rng = SplitMix(42);
    let mut entity = Vec::with_capacity(count);
    let mut time = Vec::with_capacity(count);
    let mut partition = Vec::with_capacity(count);
    let mut offset = Vec::with_capacity(count);
    let mut amount = Vec::with_capacity(count);
    let mut next_offset = [0i64; PARTITIONS as usize];
    let mut used = std::collections::HashSet::with_capacity(count);
    for i in 0..count {
        let customer = rng.next() % entities;
        // Up to ~2 minutes behind its arrival (inside the allowed lateness), so that some
        // events arrive after later ones of their customer and re-emit rows.
        let behind = (rng.next() % 3_000) as i64;
        let mut t = T0 + STEP_MS * (i as i64 - behind);
        if i % LATE_EVERY == LATE_EVERY - 1 {
            t -= 2 * 3_600_000;
        }
        // Every event time distinct, so that no window depends on how ties are ordered.
        while !used.insert(t) {
            t += 1;
        }
        let p = (customer % PARTITIONS) as usize;
        entity.push(format!("c{customer:06}"));
        time.push(t);
        partition.push(p as i32);
        offset.push(next_offset[p]);
        next_offset[p] += 1;
        amount.push((rng.next() % 100_000) as f64 / 100.0);
    }
    Ok(DataFrame::new_infer_height(vec![
        Column::new(ENTITY.into(), entity.clone()),
        Column::new(TIME.into(), time.clone()),
        Column::new(PARTITION.into(), partition),
        Column::new(OFFSET.into(), offset),
        Column::new("customer".into(), entity),
        Column::new("ts".into(), time),
        Column::new("amount".into(), amount),
    ])?)
}

/// What the peer must reproduce: rows emitted (with re-emissions), late events, and sums of
/// every feature over every emitted row.
#[derive(Default)]
struct Checksum {
    rows: usize,
    late: usize,
    count: f64,
    sum: f64,
    mean: f64,
}

impl Checksum {
    fn add(&mut self, rows: &DataFrame, late: usize) -> PolarsResult<()> {
        self.rows += rows.height();
        self.late += late;
        let total = |name: &str| -> PolarsResult<f64> {
            Ok(rows
                .column(name)?
                .as_materialized_series()
                .cast(&DataType::Float64)?
                .f64()?
                .sum()
                .unwrap_or(0.0))
        };
        self.count += total("count_1h")?;
        self.sum += total("sum_1h")?;
        self.mean += total("mean_1h")?;
        Ok(())
    }

    fn to_json(&self) -> serde_json::Value {
        json!({"rows": self.rows, "late": self.late, "count_1h": self.count,
               "sum_1h": self.sum, "mean_1h": self.mean})
    }
}

/// Times lookups through the service's router, in process.
async fn lookups(online: Arc<OnlineStore>, entities: u64, count: usize) -> anyhow::Result<()> {
    let store_dir = tempfile::tempdir()?;
    let store = FeatureStore::open(&store_dir.path().display().to_string())?;
    let codec = Arc::new(AvroCodec::new("http://127.0.0.1:9")?);
    // Never contacted by lookups: rdkafka connects lazily.
    let kafka = KafkaConfig {
        bootstrap_servers: "127.0.0.1:9".into(),
        ..Default::default()
    };
    let app = Arc::new(App {
        limits: Default::default(),
        region: None,
        catalog: Catalog::new(store.clone()),
        store,
        online,
        producer: Producer::new(&kafka, codec.clone())?,
        schema_registry: codec.registry().clone(),
        codec,
        kafka,
        stream: StreamSettings {
            max_records: 10_000,
            max_wait: Duration::from_millis(200),
            metrics: Default::default(),
            consumer_metrics: mlops_kafka::ConsumerMetrics::unregistered(),
            compaction: Default::default(),
        },
        feature_partitions: 3,
        jobs: Default::default(),
        supervisor: mlops_runtime::Supervisor::unregistered(),
        cancel: Default::default(),
    });
    // As if the view's stream job ran, which batch lookups check for.
    app.jobs
        .lock()
        .await
        .insert("spend".to_owned(), (1, Default::default()));
    let router = api::router(app.clone());
    let mut rng = SplitMix(7);

    let mut single = Histogram::<u64>::new(3)?;
    for i in 0..count + count / 10 {
        let uri = format!(
            "/v1/feature-views/spend/entities/c{:06}",
            rng.next() % entities
        );
        let request = axum::http::Request::get(uri).body(Body::empty())?;
        let started = Instant::now();
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        let body = response.into_body().collect().await?.to_bytes();
        let took = started.elapsed();
        anyhow::ensure!(status.is_success(), "lookup failed: {status} {body:?}");
        // The first tenth warms caches and the allocator.
        if i >= count / 10 {
            single.record(took.as_nanos() as u64)?;
        }
    }

    let mut batched = Histogram::<u64>::new(3)?;
    for _ in 0..count / 100 {
        let ids: Vec<String> = (0..100)
            .map(|_| format!("c{:06}", rng.next() % entities))
            .collect();
        let request = axum::http::Request::post("/v1/feature-views/spend/entities:lookup")
            .header("content-type", "application/json")
            .body(Body::from(serde_json::to_vec(&json!({"entity_ids": ids}))?))?;
        let started = Instant::now();
        let response = router.clone().oneshot(request).await?;
        let status = response.status();
        let _ = response.into_body().collect().await?;
        batched.record(started.elapsed().as_nanos() as u64)?;
        anyhow::ensure!(status.is_success(), "batch lookup failed: {status}");
    }
    let micros = |h: &Histogram<u64>, q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "{}",
        json!({
            "label": "platform-polars",
            "part": "online_lookup",
            "entities": app.online.len("spend"),
            "single_us": {"requests": single.len(), "p50": micros(&single, 0.5),
                          "p99": micros(&single, 0.99), "p999": micros(&single, 0.999)},
            "batch_100_us": {"requests": batched.len(), "p50": micros(&batched, 0.5),
                             "p99": micros(&batched, 0.99), "p999": micros(&batched, 0.999)},
        })
    );
    Ok(())
}

/// A small deterministic generator, so every run streams the same events.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
