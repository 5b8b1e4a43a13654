//! `mlops up` as a user runs it: the real binary, the broker and six services as separate
//! processes, all ready; the bus keeps topics, records and committed offsets across a
//! restart; and stopping — gracefully or by killing the launcher — leaves no process.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mlops_kafka::{KafkaConfig, TopicSpec, ensure_topics};
use mlops_testkit::{free_port, unique};
use nix::{sys::signal::Signal, unistd::Pid};
use rdkafka::{
    ClientConfig, Message, Offset, TopicPartitionList,
    consumer::{CommitMode, Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};

const SERVICES: [&str; 6] = [
    "registry",
    "ingestion",
    "feature",
    "training",
    "serving",
    "monitoring",
];
const DEADLINE: Duration = Duration::from_secs(120);

struct Ports {
    broker: u16,
    services: Vec<(&'static str, u16)>,
}

impl Ports {
    fn pick() -> Self {
        Self {
            broker: free_port(),
            services: SERVICES.iter().map(|s| (*s, free_port())).collect(),
        }
    }

    fn bootstrap(&self) -> String {
        format!("127.0.0.1:{}", self.broker)
    }
}

fn launch(data_dir: &Path, ports: &Ports) -> Child {
    let log = std::fs::File::create(data_dir.with_extension("log")).expect("launcher log");
    let mut command = Command::new(env!("CARGO_BIN_EXE_mlops"));
    command
        .arg("up")
        .env("MLOPS_DATA_DIR", data_dir)
        .env("MLOPS_BROKER_PORT", ports.broker.to_string())
        .env_remove("KAFKA_BOOTSTRAP_SERVERS")
        .env_remove("SCHEMA_REGISTRY_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log);
    for (service, port) in &ports.services {
        command.env(
            format!("MLOPS_{}_PORT", service.to_ascii_uppercase()),
            port.to_string(),
        );
    }
    command.spawn().expect("start mlops up")
}

async fn wait_until_ready(ports: &Ports) {
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
fn children_of(parent: u32) -> Vec<u32> {
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

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            let state = stat.rsplit_once(") ").map(|(_, r)| r).unwrap_or_default();
            !state.starts_with('Z')
        })
        .unwrap_or(false)
}

async fn wait_for_exit(child: &mut Child) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(
            started.elapsed() < DEADLINE,
            "launcher did not exit within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_until_gone(pids: &[u32]) {
    let started = Instant::now();
    while pids.iter().any(|p| alive(*p)) {
        let left: Vec<_> = pids.iter().filter(|p| alive(**p)).collect();
        assert!(
            started.elapsed() < DEADLINE,
            "orphans left behind: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("session.timeout.ms", "6000");
    config
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_every_service_keeps_the_bus_durable_and_leaves_no_orphans() {
    let dir = mlops_testkit::temp_dir();
    let data_dir = dir.path().join("data");
    let ports = Ports::pick();
    let topic = unique("durable");
    let group = unique("group");

    // First run: everything becomes ready; write a record and commit an offset.
    let mut launcher = launch(&data_dir, &ports);
    wait_until_ready(&ports).await;
    let children = children_of(launcher.id());
    assert_eq!(
        children.len(),
        7,
        "broker and six services as separate processes: {children:?}"
    );

    let kafka = KafkaConfig::with_bootstrap(ports.bootstrap());
    ensure_topics(&kafka, &[TopicSpec::new(&topic, 1)])
        .await
        .expect("topic");
    let producer: FutureProducer = client_config(&ports.bootstrap())
        .set("acks", "all")
        .create()
        .unwrap();
    for value in ["first", "second"] {
        producer
            .send(
                FutureRecord::<(), _>::to(&topic).payload(value),
                Timeout::After(Duration::from_secs(30)),
            )
            .await
            .expect("acknowledged");
    }
    let consumer: StreamConsumer = client_config(&ports.bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let first = tokio::time::timeout(DEADLINE, consumer.recv())
        .await
        .expect("record")
        .expect("consume");
    assert_eq!(first.payload(), Some(&b"first"[..]));
    consumer
        .commit_message(&first, CommitMode::Sync)
        .expect("commit");
    drop(first);
    drop(consumer);

    // Graceful stop: the launcher exits 0 and every child is gone.
    nix::sys::signal::kill(Pid::from_raw(launcher.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_for_exit(&mut launcher).await;
    assert!(status.success(), "mlops up exited with {status}");
    wait_until_gone(&children).await;

    // Second run on the same data directory: the bus remembers.
    let mut launcher = launch(&data_dir, &ports);
    wait_until_ready(&ports).await;
    let children = children_of(launcher.id());
    assert_eq!(children.len(), 7, "{children:?}");
    let consumer: StreamConsumer = client_config(&ports.bootstrap())
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    let mut wanted = TopicPartitionList::new();
    wanted.add_partition(&topic, 0);
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(30))
        .expect("committed offsets");
    let offset = committed
        .find_partition(&topic, 0)
        .expect("partition")
        .offset();
    assert_eq!(
        offset,
        Offset::Offset(1),
        "committed offset lost across restart"
    );
    consumer.subscribe(&[&topic]).unwrap();
    let next = tokio::time::timeout(DEADLINE, consumer.recv())
        .await
        .expect("record")
        .expect("consume");
    assert_eq!(
        next.payload(),
        Some(&b"second"[..]),
        "group did not resume after its commit"
    );
    drop(next);
    drop(consumer);

    // Killing the launcher outright must not leave its children running either.
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    wait_until_gone(&children).await;
}
