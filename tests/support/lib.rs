//! Helpers of the integration tests: the registry service started in-process on a free
//! port with its own database, and polling with a deadline instead of sleeps.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

pub mod auth;
pub mod platform;

pub use auth::{client, codec};

/// `GET url` with the admin token (what `reqwest::get` is without credentials).
pub fn get(url: impl reqwest::IntoUrl) -> impl Future<Output = reqwest::Result<reqwest::Response>> {
    client().get(url).send()
}

use std::{future::Future, time::Duration};

use tokio::{net::TcpListener, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// A registry service (with its Schema Registry API) running in this process.
pub struct TestRegistry {
    pub url: String,
    config: registry::Config,
    addr: std::net::SocketAddr,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestRegistry {
    /// Starts on a free port with a fresh SQLite database, or on `database_url` when given.
    pub async fn start(bootstrap_servers: &str, database_url: Option<String>) -> Self {
        let registry = Self::launch(bootstrap_servers, database_url).await;
        registry.until_serving().await;
        registry
    }

    /// [`Self::start`] without waiting for it to serve its API.
    pub async fn launch(bootstrap_servers: &str, database_url: Option<String>) -> Self {
        let dir = mlops_testkit::temp_dir();
        let mut config = registry::default_config();
        config.common.data_dir = dir.path().to_path_buf();
        config.common.database.url = database_url;
        config.common.kafka.bootstrap_servers = bootstrap_servers.to_owned();
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        // The registry encodes its own events through its own Schema Registry API.
        config.common.schema_registry.url = format!("http://{addr}");
        auth::secure(&mut config.common);
        let mut registry = Self {
            url: format!("http://{addr}"),
            config,
            addr,
            cancel: CancellationToken::new(),
            task: None,
            _dir: dir,
        };
        registry.spawn(listener);
        registry
    }

    fn spawn(&mut self, listener: TcpListener) {
        self.cancel = CancellationToken::new();
        self.task = Some(tokio::spawn(registry::run(
            self.config.clone(),
            listener,
            self.cancel.clone(),
        )));
    }

    /// Waits (30 s at most) until it answers its Schema Registry API.
    pub async fn until_serving(&self) {
        let client = client();
        let subjects = format!("{}/subjects", self.url);
        eventually(Duration::from_secs(30), || {
            let request = client.get(&subjects).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await
        .expect("registry answers /subjects");
    }

    /// Stops the service, keeping its database, so that it is unreachable until
    /// [`TestRegistry::resume`].
    pub async fn pause(&mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("registry task")
                .expect("registry ran cleanly");
        }
    }

    /// Its configuration, to change while it is paused.
    pub fn config_mut(&mut self) -> &mut registry::Config {
        &mut self.config
    }

    /// Where it keeps its data (artifacts included).
    pub fn data_dir(&self) -> std::path::PathBuf {
        self.config.common.data_dir.clone()
    }

    /// Starts the service again on the same address and database.
    pub async fn resume(&mut self) {
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.spawn(listener);
        self.until_serving().await;
    }

    /// Stops the service and waits for it, surfacing its error if it failed.
    pub async fn stop(mut self) {
        self.pause().await;
    }
}

impl Drop for TestRegistry {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// A new, empty database on the PostgreSQL server given by `MLOPS_TEST_POSTGRES_URL`
/// (`tests/run.sh` starts one), so that tests never share state.
pub async fn fresh_postgres_database() -> String {
    use sqlx::Connection;
    let admin = std::env::var("MLOPS_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "MLOPS_TEST_POSTGRES_URL is not set: run the suite with tests/run.sh, which \
             starts a PostgreSQL server, or point it at one (postgres://user@host:port/db)"
        )
    });
    let name = mlops_testkit::unique("registry").replace('-', "_");
    let mut connection = sqlx::postgres::PgConnection::connect(&admin)
        .await
        .expect("connect to the test PostgreSQL server");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create database");
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    format!("{base}/{name}")
}

/// A PostgreSQL server of one test's own (`tests/postgres/postgres.sh`, its server installed
/// by `tests/setup.sh`), to stop and start again under a running service; stopped when
/// dropped.
pub struct PrivatePostgres {
    /// The admin URL of its `postgres` database.
    pub url: String,
    data: String,
    port: String,
    _dir: tempfile::TempDir,
}

impl PrivatePostgres {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/postgres/postgres.sh");

    /// A new server on a free port, running.
    pub fn start() -> Self {
        let dir = mlops_testkit::temp_dir();
        // The server runs as the postgres account when the tests run as root.
        std::fs::set_permissions(
            dir.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .expect("open the directory to the server's account");
        let data = dir.path().join("postgres").display().to_string();
        let port = mlops_testkit::free_port().to_string();
        let url = Self::run(&["start", &data, &port]);
        Self {
            url,
            data,
            port,
            _dir: dir,
        }
    }

    /// Stops it (fast shutdown: connections are cut).
    pub fn stop(&self) {
        Self::run(&["stop", &self.data]);
    }

    /// Starts it again on the same port and data.
    pub fn resume(&self) {
        Self::run(&["resume", &self.data, &self.port]);
    }

    fn run(args: &[&str]) -> String {
        let output = std::process::Command::new(Self::SCRIPT)
            .args(args)
            .output()
            .expect("run postgres.sh (PostgreSQL's server is installed by tests/setup.sh)");
        assert!(
            output.status.success(),
            "postgres.sh {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = std::process::Command::new(Self::SCRIPT)
            .args(["stop", &self.data])
            .output();
    }
}

/// Polls `condition` until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut condition: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!("condition not met within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A service running in this process on a free port; restartable on the same data directory.
pub struct TestService {
    pub url: String,
    cancel: CancellationToken,
    task: Option<JoinHandle<anyhow::Result<()>>>,
    /// Set when the service runs on a runtime of its own (see [`Self::feature_alone`]).
    runtime: Option<tokio::runtime::Runtime>,
}

/// The ingestion service, the one most tests drive.
pub type TestIngestion = TestService;

impl TestService {
    /// The ingestion service with `config`.
    pub async fn start(mut config: ingestion::Config) -> Self {
        auth::secure(&mut config.common);
        Self::run(|listener, cancel| ingestion::run(config, listener, cancel)).await
    }

    /// The feature service with `config`.
    pub async fn feature(mut config: feature::Config) -> Self {
        auth::secure(&mut config.common);
        Self::run(|listener, cancel| feature::run(config, listener, cancel)).await
    }

    /// The feature service with `config` on a runtime of its own with `workers` async
    /// threads, as a service process has: work held on them shows, unhidden by the test's.
    pub async fn feature_alone(mut config: feature::Config, workers: usize) -> Self {
        auth::secure(&mut config.common);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
            .expect("service runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = runtime.spawn(async move {
            let listener = TcpListener::from_std(listener)?;
            feature::run(config, listener, token).await
        });
        Self::ready(url, cancel, task, Some(runtime)).await
    }

    /// Any service's `run`, started on a free port; ready when `/healthz` answers.
    pub async fn run<F, Fut>(run: F) -> Self
    where
        F: FnOnce(TcpListener, CancellationToken) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let cancel = CancellationToken::new();
        let task = tokio::spawn(run(listener, cancel.clone()));
        Self::ready(url, cancel, task, None).await
    }

    async fn ready(
        url: String,
        cancel: CancellationToken,
        task: JoinHandle<anyhow::Result<()>>,
        runtime: Option<tokio::runtime::Runtime>,
    ) -> Self {
        let client = reqwest::Client::new();
        let healthz = format!("{url}/healthz");
        eventually(Duration::from_secs(30), || {
            let request = client.get(&healthz).send();
            async move { matches!(request.await, Ok(r) if r.status().is_success()) }
        })
        .await
        .expect("service answers /healthz");
        Self {
            url,
            cancel,
            task: Some(task),
            runtime,
        }
    }

    /// Stops the service the way SIGTERM does and waits for it.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("service task")
                .expect("service ran cleanly");
        }
    }
}

impl Drop for TestService {
    fn drop(&mut self) {
        self.cancel.cancel();
        // A runtime may not be dropped (blocking) inside the test's async context.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Ingestion configured for a test: its own data directory, the given broker and registry.
pub fn ingestion_config(
    data_dir: &std::path::Path,
    bootstrap: &str,
    registry: &str,
) -> ingestion::Config {
    let mut config = ingestion::default_config();
    config.common.data_dir = data_dir.to_path_buf();
    config.common.kafka.bootstrap_servers = bootstrap.to_owned();
    config.common.schema_registry.url = registry.to_owned();
    config
}

/// POSTs `body` as JSON: the status and the answer's JSON (null when it has none).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> (reqwest::StatusCode, serde_json::Value) {
    answer(http.post(url).json(body)).await
}

/// GETs `url`: the status and the answer's JSON (null when it has none).
pub async fn get_json(
    http: &reqwest::Client,
    url: &str,
) -> (reqwest::StatusCode, serde_json::Value) {
    answer(http.get(url)).await
}

/// The Prometheus exposition a service at `base` answers on `/metrics`.
pub async fn metrics(http: &reqwest::Client, base: &str) -> String {
    let response = http.get(format!("{base}/metrics")).send().await.unwrap();
    response.text().await.unwrap()
}

async fn answer(request: reqwest::RequestBuilder) -> (reqwest::StatusCode, serde_json::Value) {
    let response = request.send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or_default())
}

/// Every record of `topic` from the beginning, read by a plain rdkafka consumer of a fresh
/// group, until `count` have arrived (panics after a minute without them).
pub async fn read_topic(
    bootstrap: &str,
    topic: &str,
    count: usize,
) -> Vec<rdkafka::message::OwnedMessage> {
    read_topic_until(bootstrap, topic, |messages| messages.len() >= count).await
}

/// Records of `topic` from the beginning, by one consumer of a fresh group, until `done`
/// says the ones read so far suffice (panics after a minute without a new record).
pub async fn read_topic_until(
    bootstrap: &str,
    topic: &str,
    mut done: impl FnMut(&[rdkafka::message::OwnedMessage]) -> bool,
) -> Vec<rdkafka::message::OwnedMessage> {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", mlops_testkit::unique("reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("topic.metadata.refresh.interval.ms", "500")
        .create()
        .expect("reader");
    consumer.subscribe(&[topic]).expect("subscribe");
    let wait = Duration::from_secs(60);
    let mut messages = Vec::new();
    while !done(&messages) {
        let received = tokio::time::timeout(wait, consumer.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{} records on {topic}, and not the ones awaited",
                    messages.len()
                )
            });
        let message = match received {
            // Subscribed before its first record created the topic (a prediction log's,
            // say): librdkafka says so once and reads it when it appears.
            Err(rdkafka::error::KafkaError::MessageConsumption(
                rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition,
            )) => continue,
            received => received.expect("consume"),
        };
        messages.push(message.detach());
    }
    messages
}

/// The Python with Confluent's client and the test scripts' requirements
/// (`MLOPS_TEST_PYTHON`, set up by `tests/run.sh`).
pub fn python() -> String {
    std::env::var("MLOPS_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "MLOPS_TEST_PYTHON is not set: run the suite with tests/run.sh, which installs \
             tests/python/requirements.txt into a virtualenv, or point it at a Python with them"
        )
    })
}

/// Every route of `table` answers at `url` from its handler, not with the router's bare
/// 404 or 405.
pub async fn assert_routes_served(
    http: &reqwest::Client,
    url: &str,
    table: &[mlops_service::routes::Route],
) {
    for route in table {
        let method = reqwest::Method::from_bytes(route.method.as_bytes()).unwrap();
        let response = http
            .request(
                method,
                format!("{url}{}", route.example_path("nothing_here")),
            )
            .header("content-type", "application/json")
            .body("{}")
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body = response.text().await.unwrap();
        assert_ne!(status, reqwest::StatusCode::METHOD_NOT_ALLOWED, "{route:?}");
        assert!(
            !(status == reqwest::StatusCode::NOT_FOUND && body.is_empty()),
            "{route:?} is not routed"
        );
    }
}
