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

/// Ports handed out by [`free_port`]: below Linux's ephemeral range (32768+), where the
/// outgoing connections of clients take their source ports, and apart from the ports
/// `tests/run.sh` gives Kafka (29092+) and PostgreSQL (25432+).
const TEST_PORTS: std::ops::Range<u16> = 12_000..19_000;

/// A loopback port that was free a moment ago, for a server a test starts later. Ports
/// come from [`TEST_PORTS`] in turn (from a per-process random start), so neither another
/// test of this process nor a client's outgoing connection is likely to take it first.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = u32::from(TEST_PORTS.end - TEST_PORTS.start);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        uuid::Uuid::new_v4().as_u128() as u32 % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = TEST_PORTS.start + (NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}")
}

/// A broker a test runs against.
#[derive(Debug)]
pub struct TestBroker {
    pub kind: BrokerKind,
    pub bootstrap_servers: String,
    _embedded: Option<EmbeddedBroker>,
    /// The embedded broker's database; dropped after the broker.
    _storage: Option<tempfile::TempDir>,
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

/// A fresh Tansu broker on its SQLite engine (what `mlops up` runs), owned by the calling
/// test.
pub async fn tansu() -> TestBroker {
    let mut last_error = None;
    // A port picked free can be taken before the broker binds it; try a few.
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let storage = temp_dir();
        let database = BrokerStorage::SqliteFile(storage.path().join("tansu.db"));
        match EmbeddedBroker::start(addr, database).await {
            Ok(broker) => {
                return TestBroker {
                    kind: BrokerKind::Tansu,
                    bootstrap_servers: broker.bootstrap_servers(),
                    _embedded: Some(broker),
                    _storage: Some(storage),
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
        _storage: None,
    }
}

/// An Apache Kafka broker the calling test runs itself (to stop or stall it).
pub fn kafka_at(bootstrap_servers: String) -> TestBroker {
    TestBroker {
        kind: BrokerKind::ApacheKafka,
        bootstrap_servers,
        _embedded: None,
        _storage: None,
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

/// Every file below `dir`, at any depth (none when it does not exist).
pub fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push(path);
            }
        }
    }
    files
}

/// A temporary directory removed when dropped — unless `MLOPS_TEST_KEEP_DIRS` is set, for
/// reading a failed run's data and service logs afterwards.
pub fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("mlops-test-")
        .disable_cleanup(std::env::var_os("MLOPS_TEST_KEEP_DIRS").is_some())
        .tempdir()
        .expect("create temp dir")
}

/// Asks `probe` every 100 ms until it gives a value (`Ok`), and returns it; after `limit`
/// panics naming `what` and the probe's last word on why not yet (`Err`). For conditions
/// that become true later (a run finishes, an event lands).
pub async fn until<T>(
    what: &str,
    limit: std::time::Duration,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(last) => assert!(
                tokio::time::Instant::now() < deadline,
                "{what}: not within {limit:?}; last: {last}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
