//! Test harness shared by the integration tests: a fresh in-process Tansu broker per test,
//! the real Apache Kafka broker started by `tests/run.sh`, unique names and free ports so
//! tests run in parallel without touching each other.

use std::net::{SocketAddr, TcpListener};

use mlops_broker::{BrokerStorage, EmbeddedBroker};

/// Logs to stderr when `TEST_LOG` is set (e.g. `TEST_LOG=debug`), silent otherwise.
pub fn init_logs() {
    if let Ok(filter) = std::env::var("TEST_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}

/// `prefix` plus a random suffix: topic, group and subject names no other test uses.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// A broker a test runs against.
#[derive(Debug)]
pub struct TestBroker {
    pub kind: BrokerKind,
    pub bootstrap_servers: String,
    _embedded: Option<EmbeddedBroker>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    Tansu,
    ApacheKafka,
}

impl std::fmt::Display for BrokerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BrokerKind::Tansu => "tansu",
            BrokerKind::ApacheKafka => "apache-kafka",
        })
    }
}

/// A fresh in-memory Tansu broker, owned by the calling test.
pub async fn tansu() -> TestBroker {
    let mut last_error = None;
    // A port picked free can be taken before the broker binds it; try a few.
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        match EmbeddedBroker::start(addr, BrokerStorage::Memory).await {
            Ok(broker) => {
                return TestBroker {
                    kind: BrokerKind::Tansu,
                    bootstrap_servers: broker.bootstrap_servers(),
                    _embedded: Some(broker),
                };
            }
            Err(e) => last_error = Some(e),
        }
    }
    panic!("embedded broker did not start: {last_error:?}")
}

/// The Apache Kafka broker provisioned by `tests/run.sh` (`MLOPS_TEST_KAFKA_BOOTSTRAP`).
pub fn apache_kafka() -> TestBroker {
    let bootstrap_servers = std::env::var("MLOPS_TEST_KAFKA_BOOTSTRAP").unwrap_or_else(|_| {
        panic!(
            "MLOPS_TEST_KAFKA_BOOTSTRAP is not set: run the suite with tests/run.sh, which \
             starts a real Apache Kafka broker, or set MLOPS_TEST_BROKERS=tansu to run \
             against the embedded broker only"
        )
    });
    TestBroker {
        kind: BrokerKind::ApacheKafka,
        bootstrap_servers,
        _embedded: None,
    }
}

/// Every broker the suite must pass on: Tansu and Apache Kafka, unless
/// `MLOPS_TEST_BROKERS` narrows the list (comma-separated `tansu`, `kafka`).
pub async fn brokers() -> Vec<TestBroker> {
    let wanted = std::env::var("MLOPS_TEST_BROKERS").unwrap_or_else(|_| "tansu,kafka".into());
    let mut brokers = Vec::new();
    for name in wanted.split(',').map(str::trim) {
        match name {
            "tansu" => brokers.push(tansu().await),
            "kafka" => brokers.push(apache_kafka()),
            "" => {}
            other => panic!("MLOPS_TEST_BROKERS: unknown broker {other:?}"),
        }
    }
    assert!(!brokers.is_empty(), "MLOPS_TEST_BROKERS selects no broker");
    brokers
}

/// A temporary directory removed when dropped.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mlops-test-")
        .tempdir()
        .expect("create temp dir")
}
