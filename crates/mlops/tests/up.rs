//! `mlops up` as a user runs it: the real binary, the broker and six services as separate
//! processes, all ready; the bus keeps topics, records and committed offsets across a
//! restart; and stopping — gracefully or by killing the launcher — leaves no process.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::{
    process::{Child, Command},
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
use support::{
    DEADLINE, Ports, SERVICES, children_of, launch, mlops, service_pid, wait_until_ready,
};

/// The Apache Kafka JVM among `launcher`'s descendants, if the local broker is Kafka.
fn kafka_node_pid(launcher: u32) -> Option<u32> {
    descendants_of(launcher).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .is_ok_and(|cmdline| cmdline.split(|b| *b == 0).any(|arg| arg == b"kafka.Kafka"))
    })
}

/// `parent`'s live descendants, children first.
fn descendants_of(parent: u32) -> Vec<u32> {
    let mut all = children_of(parent);
    let mut i = 0;
    while i < all.len() {
        let grandchildren = children_of(all[i]);
        all.extend(grandchildren);
        i += 1;
    }
    all
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

/// A member of `group` that commits by hand, starting at the earliest record.
fn group_consumer(bootstrap: &str, group: &str) -> StreamConsumer {
    client_config(bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer")
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", bootstrap)
        .set("session.timeout.ms", "6000");
    config
}

/// The default engine: Apache Kafka where Java is present (as in CI), Tansu otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_every_service_keeps_the_bus_durable_and_leaves_no_orphans() {
    up_lifecycle(None).await;
}

/// The fallback engine where there is no Java.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_on_tansu_runs_every_service_keeps_the_bus_durable_and_leaves_no_orphans() {
    up_lifecycle(Some("tansu")).await;
}

async fn up_lifecycle(engine: Option<&str>) {
    let dir = mlops_testkit::temp_dir();
    let data_dir = dir.path().join("data");
    let ports = Ports::pick();
    let topic = unique("durable");
    let group = unique("group");

    // First run: everything becomes ready; write a record and commit an offset.
    let mut launcher = launch(&data_dir, &ports, engine);
    wait_until_ready(&ports).await;
    let children = children_of(launcher.id());
    assert_eq!(
        children.len(),
        7,
        "broker and six services as separate processes: {children:?}"
    );
    let kafka_node = kafka_node_pid(launcher.id());
    let java = Command::new("java").arg("-version").output().is_ok();
    assert_eq!(
        kafka_node.is_some(),
        engine.is_none() && java,
        "the local broker is Apache Kafka exactly when Java is present and no engine is forced"
    );
    if let Some(jvm) = kafka_node {
        // `mlops broker` killed outright takes its JVM with it (else the restarted broker
        // would find its port taken), and the launcher brings the broker back.
        let wrapper = children_of(launcher.id())
            .into_iter()
            .find(|pid| children_of(*pid).contains(&jvm))
            .expect("the JVM's parent is a child of the launcher");
        nix::sys::signal::kill(Pid::from_raw(wrapper as i32), Signal::SIGKILL).unwrap();
        wait_until_gone(&[wrapper, jvm]).await;
        let started = Instant::now();
        while kafka_node_pid(launcher.id()).is_none() {
            assert!(started.elapsed() < DEADLINE, "the broker was not restarted");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        wait_until_ready(&ports).await;
    }

    let status = mlops(&["status"], &data_dir, &ports)
        .output()
        .expect("mlops status");
    let report = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "mlops status failed:\n{report}");
    for name in SERVICES.iter().chain(&["broker"]) {
        assert!(
            report
                .lines()
                .any(|l| l.trim_start().starts_with(name) && l.ends_with("ready")),
            "{name} not reported ready:\n{report}"
        );
    }

    // A service that dies is restarted by the launcher and becomes ready again.
    let killed = service_pid(launcher.id(), "ingestion").expect("ingestion process");
    nix::sys::signal::kill(Pid::from_raw(killed as i32), Signal::SIGKILL).unwrap();
    wait_until_gone(&[killed]).await;
    let started = Instant::now();
    let restarted = loop {
        if let Some(pid) = service_pid(launcher.id(), "ingestion") {
            break pid;
        }
        assert!(started.elapsed() < DEADLINE, "ingestion was not restarted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(restarted, killed);
    wait_until_ready(&ports).await;
    let children = children_of(launcher.id());
    assert_eq!(children.len(), 7, "{children:?}");

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
    let consumer: StreamConsumer = group_consumer(&ports.bootstrap(), &group);
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

    // Graceful stop: the launcher exits 0 and every process it started is gone.
    let processes = descendants_of(launcher.id());
    nix::sys::signal::kill(Pid::from_raw(launcher.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_for_exit(&mut launcher).await;
    assert!(status.success(), "mlops up exited with {status}");
    wait_until_gone(&processes).await;

    // Second run on the same data directory: the bus remembers.
    let mut launcher = launch(&data_dir, &ports, engine);
    wait_until_ready(&ports).await;
    let children = children_of(launcher.id());
    assert_eq!(children.len(), 7, "{children:?}");
    let consumer: StreamConsumer = group_consumer(&ports.bootstrap(), &group);
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

    // Killing the launcher outright must not leave anything it started running either.
    let processes = descendants_of(launcher.id());
    launcher.kill().unwrap();
    launcher.wait().unwrap();
    wait_until_gone(&processes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exit_succeeds_when_the_story_is_told_and_names_the_failed_step_otherwise() {
    let dir = mlops_testkit::temp_dir();
    let ports = Ports::pick();
    let output = mlops(
        &["demo", "--exit", "--timeout", "180"],
        &dir.path().join("ok"),
        &ports,
    )
    .output()
    .expect("mlops demo --exit");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "demo failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("mlops demo: every step succeeded"),
        "{stdout}"
    );
    // The invalid event is refused with its field, and the windows are the hand-computed
    // ones: c-1 paid 10..29, every 5 minutes; the last hour holds its last 12 payments.
    assert!(
        stdout.contains(r#"rejected 1: [{"field":"amount","reason":"-5 is below the minimum 0"}]"#),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            r#"c-1 {"amount":29.0,"amount_mean_1h":23.5,"amount_sum_1h":282.0,"payments_1h":12}"#
        ),
        "{stdout}"
    );
    // The model trained on the labelled snapshot passes its gate and reaches production,
    // announced on models.lifecycle.
    assert!(stdout.contains(r#"version 1 is "production""#), "{stdout}");
    assert!(
        stdout.contains("models.lifecycle: 2 events published for demo_big_spender"),
        "{stdout}"
    );
    // Serving answers with it, by entity id and over the Open Inference Protocol.
    assert!(
        stdout.contains("c-3 -> version 1 (\"production\")"),
        "{stdout}"
    );
    assert!(stdout.contains(r#""name":"probability""#), "{stdout}");
    // Then the loop closes by itself: usual traffic raises no alarm, the shift does, the
    // retraining it asks for registers version 2, which wins its canary and serves.
    assert!(stdout.contains("— no drift"), "{stdout}");
    assert!(
        stdout.contains(r#"on version 1: "critical" severity"#),
        "{stdout}"
    );
    assert!(stdout.contains("amount psi = "), "{stdout}");
    assert!(stdout.contains(r#"verdict "promote": baked"#), "{stdout}");
    assert!(stdout.contains("version 2 is in production"), "{stdout}");
    assert!(stdout.contains("mlops: stopped"), "{stdout}");

    // With a broker that does not exist, no service can become ready: the demo fails
    // within its timeout and says which step.
    let ports = Ports::pick();
    let output = mlops(
        &["demo", "--exit", "--timeout", "5"],
        &dir.path().join("broken"),
        &ports,
    )
    .env(
        "KAFKA_BOOTSTRAP_SERVERS",
        format!("127.0.0.1:{}", free_port()),
    )
    .output()
    .expect("mlops demo --exit");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "demo succeeded without a broker");
    assert!(stderr.contains("step 'platform ready' failed"), "{stderr}");
}

/// `mlops up --jaeger`: Jaeger beside the platform, and every service's spans in it — on
/// the embedded Tansu broker, whose own storage spans stay out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_with_jaeger_sends_every_services_spans_to_it() {
    let dir = mlops_testkit::temp_dir();
    let data = dir.path().join("data");
    let ports = Ports::pick();
    let ui = free_port();
    let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
    let _launcher = support::Launched(
        mlops(&["up", "--jaeger"], &data, &ports)
            .env("MLOPS_BROKER", "tansu")
            .env("MLOPS_JAEGER_OTLP_GRPC_PORT", free_port().to_string())
            .env("MLOPS_JAEGER_OTLP_HTTP_PORT", free_port().to_string())
            .env("MLOPS_JAEGER_UI_PORT", ui.to_string())
            .env("OTEL_BSP_SCHEDULE_DELAY", "200")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlops up --jaeger"),
    );
    wait_until_ready(&ports).await;
    let http = support::admin_client(&data, Duration::from_secs(30));
    let reads = [
        ("ingestion", "/v1/datasets"),
        ("registry", "/subjects"),
        ("serving", "/v2/models/none"),
        ("feature", "/v1/feature-views"),
        ("training", "/v1/models/specs"),
        ("monitoring", "/v1/monitoring/models"),
    ];
    let plain = reqwest::Client::new();
    let services = mlops_testkit::until("every service in Jaeger", DEADLINE, async || {
        for (service, path) in reads {
            let port = ports
                .services
                .iter()
                .find(|(s, _)| *s == service)
                .unwrap()
                .1;
            let _ = http
                .get(format!("http://127.0.0.1:{port}{path}"))
                .send()
                .await;
        }
        let answer: serde_json::Value = plain
            .get(format!("http://127.0.0.1:{ui}/api/services"))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let listed: Vec<String> = answer["data"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(str::to_owned))
            .collect();
        SERVICES
            .iter()
            .all(|s| listed.iter().any(|l| l == s))
            .then_some(listed.clone())
            .ok_or_else(|| format!("listed so far: {listed:?}"))
    })
    .await;
    assert!(
        !services.iter().any(|s| s == "broker"),
        "the broker's internals stay out: {services:?}"
    );
}
