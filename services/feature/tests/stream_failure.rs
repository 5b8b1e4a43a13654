//! A stream job that keeps failing, or panics, is restarted from its checkpoint by its
//! supervisor, and shows as failing in the service's metrics until a batch goes through.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use feature::{
    store::FeatureStore,
    stream::{self, BatchJob, Checkpoint, Processed, StreamMetrics, StreamSettings, Wiring},
};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, Record, TopicSpec, ensure_topics};
use mlops_runtime::{JobState, Supervisor};
use mlops_schema::AvroCodec;
use mlops_testkit::unique;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Fails every batch until `healthy` is set; panics on the first batch when `panic` is.
struct FlakyJob {
    name: String,
    healthy: Arc<AtomicBool>,
    panic: Arc<AtomicBool>,
}

impl BatchJob for FlakyJob {
    fn name(&self) -> String {
        self.name.clone()
    }

    fn state_prefix(&self) -> String {
        format!("state/{}/", self.name)
    }

    fn output_prefix(&self) -> String {
        format!("out/{}/", self.name)
    }

    async fn restore(&mut self, _: &FeatureStore, _: &Checkpoint) -> anyhow::Result<()> {
        Ok(())
    }

    async fn process(
        &mut self,
        _: &FeatureStore,
        _: &[Record],
        _: u64,
    ) -> anyhow::Result<Processed> {
        if self.panic.swap(false, Ordering::SeqCst) {
            panic!("a bug in the job");
        }
        anyhow::ensure!(
            self.healthy.load(Ordering::SeqCst),
            "the store is unreachable"
        );
        Ok(Processed::default())
    }

    fn committed(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}

fn metric(registry: &Registry, name: &str, job: &str) -> Option<f64> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    let prefix = format!("{name}{{job=\"{job}\"}} ");
    text.lines()
        .find_map(|line| line.strip_prefix(&prefix))
        .map(|value| value.parse().unwrap())
}

async fn wait_for_metric(registry: &Registry, name: &str, job: &str, wanted: impl Fn(f64) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let value = metric(registry, name, job);
        if value.is_some_and(&wanted) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} of {job}: {value:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_stream_job_is_visible_in_metrics_until_it_recovers() {
    mlops_testkit::init_logs();
    let broker = mlops_testkit::tansu().await;
    let kafka = KafkaConfig {
        bootstrap_servers: broker.bootstrap_servers.clone(),
        ..Default::default()
    };
    let topic = unique("events");
    ensure_topics(&kafka, &[TopicSpec::new(&topic, 1)])
        .await
        .unwrap();
    // Never asked for a schema: this job dead-letters nothing.
    let producer = Producer::new(
        &kafka,
        Arc::new(AvroCodec::new("http://127.0.0.1:9").unwrap()),
    )
    .unwrap();
    producer
        .send_bytes(&topic, Some(b"k"), b"payload", OwnedHeaders::new())
        .await
        .unwrap();

    let mut registry = Registry::default();
    let metrics = StreamMetrics::register(&mut registry);
    let supervisor = Supervisor::register(&mut registry, stream::METRICS_PREFIX);
    let dir = mlops_testkit::temp_dir();
    let healthy = Arc::new(AtomicBool::new(false));
    let panic = Arc::new(AtomicBool::new(true));
    let name = unique("flaky");
    let cancel = CancellationToken::new();
    let wiring = Wiring {
        store: FeatureStore::open(&dir.path().display().to_string()).unwrap(),
        kafka: kafka.clone(),
        group: unique("flaky-group"),
        topics: vec![topic.clone()],
        dead_letters: producer,
        settings: StreamSettings {
            max_records: 100,
            max_wait: Duration::from_millis(20),
            metrics,
            consumer_metrics: mlops_kafka::ConsumerMetrics::unregistered(),
            compaction: Default::default(),
        },
    };
    let (job_name, token) = (name.clone(), cancel.clone());
    let (job_healthy, job_panic) = (healthy.clone(), panic.clone());
    supervisor.spawn(name.clone(), cancel.clone(), move |reporter| {
        let job = FlakyJob {
            name: job_name.clone(),
            healthy: job_healthy.clone(),
            panic: job_panic.clone(),
        };
        stream::run(job, wiring.clone(), token.clone(), reporter)
    });

    // The first attempt panics, the next ones fail; each is restarted from the
    // checkpoint and the job is reported as failing, with the panic counted.
    wait_for_metric(
        &registry,
        "mlops_feature_stream_failures_total",
        &name,
        |v| v >= 3.0,
    )
    .await;
    wait_for_metric(&registry, "mlops_feature_stream_failing", &name, |v| {
        v == 1.0
    })
    .await;
    assert_eq!(
        metric(&registry, "mlops_feature_stream_panics_total", &name),
        Some(1.0)
    );
    assert_eq!(
        metric(&registry, "mlops_feature_stream_batches_total", &name),
        None
    );
    let status = supervisor.status(&name).unwrap();
    assert_eq!(status.state, JobState::Failing);
    assert_eq!(status.panics, 1);
    assert!(
        status
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("the store is unreachable")),
        "{status:?}"
    );

    // Once the cause is gone the same record goes through and the job is healthy again.
    healthy.store(true, Ordering::SeqCst);
    wait_for_metric(
        &registry,
        "mlops_feature_stream_batches_total",
        &name,
        |v| v == 1.0,
    )
    .await;
    assert_eq!(
        metric(&registry, "mlops_feature_stream_failing", &name),
        Some(0.0)
    );
    assert_eq!(supervisor.status(&name).unwrap().state, JobState::Running);

    cancel.cancel();
    assert!(
        supervisor.drain(Duration::from_secs(30)).await,
        "the job stops when cancelled"
    );
    assert_eq!(supervisor.status(&name).unwrap().state, JobState::Stopped);
}
