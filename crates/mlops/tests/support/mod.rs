//! The platform as a user starts it: `mlops` with its own data directory and free ports.

#![allow(dead_code, unreachable_pub)]

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mlops_testkit::free_port;

pub(crate) mod jaeger;
pub(crate) mod metrics;
pub(crate) mod traffic;

pub(crate) const SERVICES: [&str; 6] = [
    "registry",
    "ingestion",
    "feature",
    "training",
    "serving",
    "monitoring",
];
pub(crate) const DEADLINE: Duration = Duration::from_secs(120);

pub(crate) struct Ports {
    pub(crate) broker: u16,
    pub(crate) controller: u16,
    pub(crate) services: Vec<(&'static str, u16)>,
}

impl Ports {
    pub(crate) fn pick() -> Self {
        Self {
            broker: free_port(),
            controller: free_port(),
            services: SERVICES.iter().map(|s| (*s, free_port())).collect(),
        }
    }

    pub(crate) fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.broker)
    }

    /// `path` on `service`'s API.
    pub(crate) fn url(&self, service: &str, path: &str) -> String {
        let port = self
            .services
            .iter()
            .find(|(s, _)| *s == service)
            .expect(service)
            .1;
        format!("http://127.0.0.1:{port}{path}")
    }
}

/// The payments dataset the scenarios stream (declared with `POST /v1/datasets`): keyed by
/// customer, event ids in `txn_id`, event time in `ts`, two partitions.
pub(crate) fn payments_dataset(name: &str, namespace: &str) -> serde_json::Value {
    serde_json::json!({
        "name": name, "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
        "partitions": 2,
        "schema": {"type": "record", "name": "Payment", "namespace": namespace, "fields": [
            {"name": "txn_id", "type": "string"},
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
    })
}

/// A number from the environment (a run's size), or `default`.
pub(crate) fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// POSTs `body` as JSON and returns the answer; anything but a success fails the test.
pub(crate) async fn post(
    http: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    let response = http.post(url).json(body).send().await.expect(url);
    let status = response.status();
    let answer: serde_json::Value = response.json().await.unwrap_or_default();
    assert!(status.is_success(), "{url}: {status} {answer}");
    answer
}

/// `mlops <args>` on this platform's data directory and ports, on the default broker engine.
pub(crate) fn mlops(args: &[&str], data_dir: &Path, ports: &Ports) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mlops"));
    command
        .args(args)
        .env("MLOPS_DATA_DIR", data_dir)
        .env("MLOPS_BROKER_PORT", ports.broker.to_string())
        .env("MLOPS_BROKER_CONTROLLER_PORT", ports.controller.to_string())
        .env_remove("MLOPS_BROKER")
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .stdin(Stdio::null());
    for (service, port) in &ports.services {
        command.env(
            format!("MLOPS_{}_PORT", service.to_ascii_uppercase()),
            port.to_string(),
        );
    }
    command
}

/// `mlops up` on `data_dir` (on the broker `engine` names, if any), its output in a log beside it;
/// stopped when the returned guard is dropped.
pub(crate) fn launch(data_dir: &Path, ports: &Ports, engine: Option<&str>) -> Launched {
    launch_with(data_dir, ports, engine, |_| {})
}

/// [`launch`], with the command changed by `change` first (environment variables).
pub(crate) fn launch_with(
    data_dir: &Path,
    ports: &Ports,
    engine: Option<&str>,
    change: impl FnOnce(&mut Command),
) -> Launched {
    let log = std::fs::File::create(data_dir.with_extension("log")).expect("launcher log");
    let mut command = mlops(&["up"], data_dir, ports);
    if let Some(engine) = engine {
        command.env("MLOPS_BROKER", engine);
    }
    change(&mut command);
    Launched(
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start mlops up"),
    )
}

/// The child of `parent` running `mlops service <name>`.
pub(crate) fn service_pid(parent: u32, name: &str) -> Option<u32> {
    children_of(parent).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.ends_with(format!("service\0{name}\0").as_bytes()))
    })
}

/// A client presenting the admin token `mlops up` wrote into `data_dir`.
pub(crate) fn admin_client(data_dir: &Path, timeout: Duration) -> reqwest::Client {
    let token =
        std::fs::read_to_string(data_dir.join("admin.token")).expect("mlops up wrote admin.token");
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {}", token.trim()).parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(timeout)
        .default_headers(headers)
        .build()
        .unwrap()
}

pub(crate) async fn wait_until_ready(ports: &Ports) {
    let client = reqwest::Client::new();
    let started = Instant::now();
    for (service, port) in &ports.services {
        loop {
            let url = format!("http://127.0.0.1:{port}/readyz");
            if let Ok(response) = client.get(&url).send().await
                && response.status().is_success()
            {
                break;
            }
            assert!(
                started.elapsed() < DEADLINE,
                "{service} not ready within {DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Live (non-zombie) processes whose parent is `parent`.
pub(crate) fn children_of(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // Fields after the command name: state, ppid, ...
            let rest = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
            let mut fields = rest.split_whitespace();
            let state = fields.next().unwrap_or("Z");
            let ppid = fields.next().and_then(|p| p.parse::<u32>().ok());
            state != "Z" && ppid == Some(parent)
        })
        .collect()
}

/// A running `mlops up` that is stopped (SIGTERM, then SIGKILL) when dropped, so a failing
/// test leaves no platform behind.
pub(crate) struct Launched(pub(crate) Child);

impl std::ops::Deref for Launched {
    type Target = Child;

    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Launched {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for Launched {
    fn drop(&mut self) {
        // Stopped and reaped by the test already: its pid may belong to another process now.
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
