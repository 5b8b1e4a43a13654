//! The Kafka plumbing against real brokers — the embedded Tansu broker and Apache Kafka —
//! with real rdkafka clients, Avro through the registry's Schema Registry API, and trace
//! context in headers.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::{sync::Arc, time::Duration};

use mlops_events::{
    DeadLetter, DriftEvent, DriftSeverity, DriftStatistic, DriftedFeature, new_id, now_millis,
    topics,
};
use mlops_integration_tests::TestRegistry;
use mlops_kafka::{
    ConsumerLoop, Handler, HandlerError, KafkaConfig, OwnedHeaders, Producer, Record, TopicSpec,
    consumer::dlq_headers, ensure_topics,
};
use mlops_schema::AvroCodec;
use mlops_testkit::{TestBroker, brokers, unique};
use rdkafka::{Message, message::Headers};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

const WAIT: Duration = Duration::from_secs(60);

fn init() {
    mlops_testkit::init_logs();
    // Real spans, so that trace context has something to carry.
    if let Ok(guard) = mlops_telemetry::init_traces_only("kafka-tests") {
        std::mem::forget(guard);
    }
}

fn drift_event(feature: &str) -> DriftEvent {
    DriftEvent {
        event_id: new_id(),
        model_name: "fraud".into(),
        model_version: 3,
        window_start: 1_700_000_000_000,
        window_end: 1_700_000_060_000,
        window_size: 500,
        features: vec![DriftedFeature {
            feature: feature.into(),
            statistic: DriftStatistic::Psi,
            value: 0.42,
            threshold: 0.2,
            p_value: None,
        }],
        severity: DriftSeverity::Critical,
        detected_at: now_millis(),
        trace_id: None,
    }
}

/// Everything one test needs on one broker: config, a Schema Registry, a producer.
struct Setup {
    broker: TestBroker,
    kafka: KafkaConfig,
    registry: TestRegistry,
    codec: Arc<AvroCodec>,
    producer: Producer,
}

async fn setup(broker: TestBroker) -> Setup {
    let kafka = KafkaConfig::with_bootstrap(&broker.bootstrap_servers);
    let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
    let codec = Arc::new(mlops_integration_tests::codec(&registry.url));
    let producer = Producer::new(&kafka, codec.clone()).expect("producer");
    Setup {
        broker,
        kafka,
        registry,
        codec,
        producer,
    }
}

/// A record's offset, its DriftEvent, and the trace id it was processed under.
type Seen = (i64, DriftEvent, Option<String>);

/// Decodes every record as a DriftEvent and reports it with the trace id it ran under.
struct Collect {
    codec: Arc<AvroCodec>,
    seen: mpsc::UnboundedSender<Seen>,
}

impl Handler for Collect {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let payload = record.payload.as_deref().unwrap_or_default();
        let event: DriftEvent = self.codec.decode(payload).await?;
        let _ = self
            .seen
            .send((record.offset, event, mlops_telemetry::current_trace_id()));
        Ok(())
    }
}

/// A consumer loop of `group` on `topics` decoding DriftEvents: what it sees (offset,
/// event, trace id), its stop, and its task.
fn collecting(
    s: &Setup,
    group: &str,
    topics: Vec<String>,
) -> (
    mpsc::UnboundedReceiver<Seen>,
    CancellationToken,
    tokio::task::JoinHandle<mlops_kafka::Result<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let consumer = ConsumerLoop::new(&s.kafka, group, topics, s.producer.clone());
    let task = tokio::spawn(consumer.run(
        Collect {
            codec: s.codec.clone(),
            seen: tx,
        },
        cancel.clone(),
    ));
    (rx, cancel, task)
}

async fn next<T>(rx: &mut mpsc::UnboundedReceiver<T>, what: &str) -> T {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
        .expect("channel open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn avro_events_and_trace_context_cross_the_broker() {
    init();
    for broker in brokers().await {
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let topic = unique("drift");
        ensure_topics(&s.kafka, &[TopicSpec::new(&topic, 3)])
            .await
            .expect("topic");

        let sent = drift_event("amount");
        let span = tracing::info_span!("publish drift");
        let producer_trace = async {
            s.producer
                .send_event(&topic, Some(b"fraud"), &sent, OwnedHeaders::new())
                .await
                .expect("acknowledged");
            mlops_telemetry::current_trace_id().expect("span has a trace id")
        }
        .instrument(span)
        .await;

        let (mut rx, cancel, task) = collecting(&s, &unique("group"), vec![topic.clone()]);
        let (_, received, consumer_trace) = next(&mut rx, "event").await;
        assert_eq!(received, sent, "{kind}: event changed in transit");
        assert_eq!(
            consumer_trace.as_deref(),
            Some(producer_trace.as_str()),
            "{kind}: the consumer's span is not in the producer's trace"
        );

        // The subject follows the TopicNameStrategy and holds the schema from schemas/.
        let latest: serde_json::Value = mlops_integration_tests::get(format!(
            "{}/subjects/{topic}-value/versions/latest",
            s.registry.url
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(latest["version"], 1, "{kind}: {latest}");
        cancel.cancel();
        task.await.unwrap().expect("consumer loop ends cleanly");
    }
}

fn header(message: &rdkafka::message::OwnedMessage, key: &str) -> String {
    let headers = message.headers().expect("headers");
    let value = headers
        .iter()
        .find(|h| h.key == key)
        .and_then(|h| h.value)
        .unwrap_or_else(|| panic!("no {key} header"));
    String::from_utf8(value.to_vec()).expect("utf-8 header")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_dead_lettered_and_the_partition_moves_on() {
    init();
    for broker in brokers().await {
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let topic = unique("events");
        ensure_topics(&s.kafka, &[TopicSpec::new(&topic, 1)])
            .await
            .expect("topic");

        let first = drift_event("first");
        let last = drift_event("last");
        s.producer
            .send_event(&topic, None, &first, OwnedHeaders::new())
            .await
            .unwrap();
        let garbage = b"not avro at all".to_vec();
        s.producer
            .send_bytes(&topic, Some(b"k1"), &garbage, OwnedHeaders::new())
            .await
            .unwrap();
        s.producer
            .send_bytes(&topic, None, &[0, 0, 0], OwnedHeaders::new())
            .await
            .unwrap();
        s.producer
            .send_event(&topic, None, &last, OwnedHeaders::new())
            .await
            .unwrap();

        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let group = unique("group");
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = mlops_kafka::ConsumerMetrics::register(&mut registry);
        let consumer = ConsumerLoop::new(&s.kafka, &group, vec![topic.clone()], s.producer.clone())
            .with_metrics(metrics);
        let task = tokio::spawn(consumer.run(
            Collect {
                codec: s.codec.clone(),
                seen: tx,
            },
            cancel.clone(),
        ));
        let (offset, event, _) = next(&mut rx, "first event").await;
        assert_eq!((offset, &event), (0, &first), "{kind}");
        let (offset, event, _) = next(&mut rx, "event after the poison").await;
        assert_eq!(
            (offset, &event),
            (3, &last),
            "{kind}: records after the poison were not processed"
        );

        let dead = mlops_integration_tests::read_topic(
            &s.broker.bootstrap_servers,
            &topics::dead_letter(&topic),
            2,
        )
        .await;
        let by_offset = |o: &str| {
            dead.iter()
                .find(|m| header(m, dlq_headers::SOURCE_OFFSET) == o)
                .expect("dead letter")
        };
        let letter = by_offset("1");
        assert_eq!(
            header(letter, dlq_headers::REASON),
            "unknown magic byte 0x6e: not Confluent-framed Avro"
        );
        assert_eq!(header(letter, dlq_headers::ERROR_CLASS), "decode");
        assert_eq!(header(letter, dlq_headers::SOURCE_TOPIC), topic);
        assert_eq!(header(letter, dlq_headers::SOURCE_PARTITION), "0");
        assert_eq!(header(letter, dlq_headers::CONSUMER_GROUP), group);
        let decoded: DeadLetter = s
            .codec
            .decode(letter.payload().unwrap())
            .await
            .expect("DeadLetter decodes");
        assert_eq!(
            decoded.value.map(|b| b.0),
            Some(garbage),
            "{kind}: original bytes not kept"
        );
        assert_eq!(decoded.key.map(|b| b.0), Some(b"k1".to_vec()));
        assert_eq!(decoded.source_offset, 1);
        assert_eq!(
            header(by_offset("2"), dlq_headers::REASON),
            "record of 3 bytes is shorter than the 5-byte Confluent header"
        );

        cancel.cancel();
        task.await.unwrap().expect("consumer loop ends cleanly");

        // Both rejections are counted by class, and every record's outcome is counted.
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let line =
            format!(r#"mlops_consumer_dead_letters_total{{topic="{topic}",class="decode"}} 2"#);
        assert!(text.contains(&line), "{kind}: {text}");
        let line = format!(
            r#"mlops_consumer_records_total{{topic="{topic}",group="{group}",outcome="processed"}} 2"#
        );
        assert!(text.contains(&line), "{kind}: {text}");
    }
}

/// Records every offset it is given, then never finishes: a consumer that did the work
/// but died before it could commit.
struct DiesBeforeCommit {
    seen: mpsc::UnboundedSender<i64>,
}

impl Handler for DiesBeforeCommit {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let _ = self.seen.send(record.offset);
        std::future::pending().await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_record_processed_but_not_committed_is_redelivered() {
    init();
    for broker in brokers().await {
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let topic = unique("work");
        let group = unique("group");
        ensure_topics(&s.kafka, &[TopicSpec::new(&topic, 1)])
            .await
            .expect("topic");
        let work = drift_event("work");
        s.producer
            .send_event(&topic, None, &work, OwnedHeaders::new())
            .await
            .unwrap();

        // First member processes offset 0 and is killed before committing.
        let (tx, mut rx) = mpsc::unbounded_channel();
        let doomed = tokio::spawn(
            ConsumerLoop::new(&s.kafka, &group, vec![topic.clone()], s.producer.clone())
                .run(DiesBeforeCommit { seen: tx }, CancellationToken::new()),
        );
        assert_eq!(next(&mut rx, "first delivery").await, 0, "{kind}");
        doomed.abort();
        let _ = doomed.await;

        // The next member of the group gets the same record again, and commits it.
        let (mut rx, cancel, survivor) = collecting(&s, &group, vec![topic.clone()]);
        let (offset, event, _) = next(&mut rx, "redelivery").await;
        assert_eq!(
            (offset, &event),
            (0, &work),
            "{kind}: uncommitted record was lost"
        );
        cancel.cancel();
        survivor.await.unwrap().expect("clean stop");

        // Committed now: a third member starts after it, at the next record.
        let marker = drift_event("marker");
        s.producer
            .send_event(&topic, None, &marker, OwnedHeaders::new())
            .await
            .unwrap();
        let (mut rx, cancel, third) = collecting(&s, &group, vec![topic.clone()]);
        let (offset, event, _) = next(&mut rx, "record after the commit").await;
        assert_eq!(
            (offset, &event),
            (1, &marker),
            "{kind}: committed record was delivered again"
        );
        cancel.cancel();
        third.await.unwrap().expect("clean stop");
    }
}

/// Reports every offset it is given; holds the record at `gate_offset` (once) until
/// `gate` is notified: a handler stuck on a dependency.
struct Gated {
    seen: mpsc::UnboundedSender<i64>,
    gate_offset: i64,
    gate: Arc<tokio::sync::Notify>,
    held: std::sync::atomic::AtomicBool,
}

impl Gated {
    fn new(seen: mpsc::UnboundedSender<i64>, gate_offset: i64) -> (Self, Arc<tokio::sync::Notify>) {
        let gate = Arc::new(tokio::sync::Notify::new());
        let handler = Self {
            seen,
            gate_offset,
            gate: gate.clone(),
            held: Default::default(),
        };
        (handler, gate)
    }
}

impl Handler for Gated {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let _ = self.seen.send(record.offset);
        if record.offset == self.gate_offset
            && !self.held.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            self.gate.notified().await;
        }
        Ok(())
    }
}

fn committed_offset(bootstrap: &str, group: &str, topic: &str) -> Option<i64> {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .expect("consumer");
    let mut wanted = rdkafka::TopicPartitionList::new();
    wanted.add_partition(topic, 0);
    let committed = consumer
        .committed_offsets(wanted, Duration::from_secs(30))
        .expect("committed offsets");
    match committed.find_partition(topic, 0)?.offset() {
        rdkafka::Offset::Offset(offset) => Some(offset),
        _ => None,
    }
}

/// A member stuck on a record past `max.poll.interval.ms` is expelled; the partition goes
/// to another member, which carries on. When the stuck record finally finishes, its commit
/// is refused: the member must count that and keep running (not end the service), and
/// must never commit the partition it lost over its successor's progress.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_expelled_member_survives_its_refused_commit_and_never_rewinds_its_successor() {
    init();
    for broker in brokers().await {
        // Tansu 0.6 hands the partition to the new member while the stuck one still owns
        // it and is never told (no revocation, its commits accepted): the guarantee
        // cannot hold there. Written up in ARCHITECTURE.md.
        if broker.kind == mlops_testkit::BrokerKind::Tansu {
            continue;
        }
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let topic = unique("stuck");
        let group = unique("group");
        ensure_topics(&s.kafka, &[TopicSpec::new(&topic, 1)])
            .await
            .expect("topic");
        for n in 0..3 {
            s.producer
                .send_event(
                    &topic,
                    None,
                    &drift_event(&format!("f{n}")),
                    OwnedHeaders::new(),
                )
                .await
                .unwrap();
        }
        // The shortest interval a broker allows with a 6 s session.
        let kafka = KafkaConfig {
            max_poll_interval_ms: 7_000,
            ..s.kafka.clone()
        };

        // A processes offset 0 and is stuck on offset 1.
        let mut registry = prometheus_client::registry::Registry::default();
        let metrics = mlops_kafka::ConsumerMetrics::register(&mut registry);
        let (tx, mut seen_by_a) = mpsc::unbounded_channel();
        let (stuck, release) = Gated::new(tx, 1);
        let stop_a = CancellationToken::new();
        let a = tokio::spawn(
            ConsumerLoop::new(&kafka, &group, vec![topic.clone()], s.producer.clone())
                .with_metrics(metrics)
                .run(stuck, stop_a.clone()),
        );
        assert_eq!(next(&mut seen_by_a, "A's first record").await, 0, "{kind}");
        assert_eq!(next(&mut seen_by_a, "A's second record").await, 1, "{kind}");

        // B joins; once A is expelled, B takes the partition from A's last commit.
        let (tx, mut seen_by_b) = mpsc::unbounded_channel();
        let (successor, _) = Gated::new(tx, -1);
        let stop_b = CancellationToken::new();
        let b = tokio::spawn(
            ConsumerLoop::new(&kafka, &group, vec![topic.clone()], s.producer.clone())
                .run(successor, stop_b.clone()),
        );
        assert_eq!(next(&mut seen_by_b, "B's first record").await, 1, "{kind}");
        assert_eq!(next(&mut seen_by_b, "B's second record").await, 2, "{kind}");

        // A finishes its stuck record: its commit is refused, and A keeps running.
        release.notify_one();
        let failures_line = format!(r#"mlops_consumer_commit_failures_total{{group="{group}"}} "#);
        let refused = mlops_integration_tests::eventually(WAIT, || {
            let mut text = String::new();
            prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
            let counted = text.lines().any(|l| l.starts_with(&failures_line));
            async move { counted }
        })
        .await;
        assert!(
            refused.is_ok(),
            "{kind}: the refused commit was not counted"
        );
        assert!(
            !a.is_finished(),
            "{kind}: a refused commit ended the consumer loop"
        );

        // B leaves first, having committed everything; A's own leaving must not rewind it.
        stop_b.cancel();
        b.await.unwrap().expect("B stops cleanly");
        stop_a.cancel();
        a.await.unwrap().expect("A stops cleanly");
        assert_eq!(
            committed_offset(&s.broker.bootstrap_servers, &group, &topic),
            Some(3),
            "{kind}: the group's committed position is not after the last record"
        );
    }
}

/// A member commits on a clock, not after every record: while it keeps running, its last
/// position becomes durable within a couple of intervals of the last record, so when it is
/// killed its successor redelivers nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_running_member_commits_its_progress_on_a_clock() {
    init();
    const RECORDS: i64 = 300;
    for broker in brokers().await {
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let topic = unique("clocked");
        let group = unique("group");
        ensure_topics(&s.kafka, &[TopicSpec::new(&topic, 1)])
            .await
            .expect("topic");
        for n in 0..RECORDS {
            s.producer
                .send_bytes(&topic, None, n.to_string().as_bytes(), OwnedHeaders::new())
                .await
                .unwrap();
        }
        let (tx, mut rx) = mpsc::unbounded_channel();
        let member = tokio::spawn(
            ConsumerLoop::new(&s.kafka, &group, vec![topic.clone()], s.producer.clone())
                .run(Payloads(tx), CancellationToken::new()),
        );
        for n in 0..RECORDS {
            assert_eq!(next(&mut rx, "a record").await, n.to_string().as_bytes());
        }
        let committed = mlops_integration_tests::eventually(WAIT, || {
            let at = committed_offset(&s.broker.bootstrap_servers, &group, &topic);
            async move { at == Some(RECORDS) }
        })
        .await;
        assert!(
            committed.is_ok(),
            "{kind}: the running member's position was not committed"
        );

        // Killed without a chance to commit: its successor starts after the last record.
        member.abort();
        let _ = member.await;
        s.producer
            .send_bytes(&topic, None, b"after", OwnedHeaders::new())
            .await
            .unwrap();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let cancel = CancellationToken::new();
        let successor = tokio::spawn(
            ConsumerLoop::new(&s.kafka, &group, vec![topic.clone()], s.producer.clone())
                .run(Payloads(tx), cancel.clone()),
        );
        assert_eq!(
            next(&mut rx, "the successor's first record").await,
            b"after",
            "{kind}: records were delivered again"
        );
        cancel.cancel();
        successor.await.unwrap().expect("clean stop");
    }
}

/// Forwards every record's payload.
#[derive(Clone)]
struct Payloads(mpsc::UnboundedSender<Vec<u8>>);

impl Handler for Payloads {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let _ = self.0.send(record.payload.clone().unwrap_or_default());
        Ok(())
    }
}

/// The shared client builder against an Apache Kafka broker that speaks only SASL_SSL
/// (SCRAM-SHA-512 and OAUTHBEARER; a certificate of its own CA), started by
/// `tests/run.sh` beside a small OpenID Connect provider: topics are created, a record
/// produced and consumed through a group; with an OIDC token (client credentials) a
/// record is produced too; secrets never show in the settings' debug form; a wrong
/// password or client secret gets nothing in.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn clients_speak_sasl_ssl_with_scram_and_oauthbearer_to_a_secured_broker() {
    init();
    if std::env::var("MLOPS_TEST_BROKERS").as_deref() == Ok("tansu") {
        return;
    }
    let var = |name: &str| {
        std::env::var(name).unwrap_or_else(|_| {
            panic!(
                "{name} is not set: run the suite with tests/run.sh, which starts a SASL_SSL broker"
            )
        })
    };
    let secured = |password: &str| KafkaConfig {
        security_protocol: mlops_kafka::SecurityProtocol::SaslSsl,
        sasl_mechanism: Some("SCRAM-SHA-512".to_owned()),
        sasl_username: Some("mlops".to_owned()),
        sasl_password: Some(mlops_runtime::Secret::new(password)),
        ssl_ca_location: Some(var("MLOPS_TEST_KAFKA_SECURED_CA")),
        ..KafkaConfig::with_bootstrap(var("MLOPS_TEST_KAFKA_SECURED_BOOTSTRAP"))
    };
    let password = var("MLOPS_TEST_KAFKA_SECURED_PASSWORD");
    let kafka = secured(&password);
    assert!(kafka.validate().is_empty(), "{:?}", kafka.validate());
    assert!(
        !format!("{kafka:?}").contains(&password),
        "the password in the settings' debug form"
    );

    let topic = unique("secured");
    ensure_topics(&kafka, &[TopicSpec::new(&topic, 1)])
        .await
        .expect("topics over SASL_SSL");
    // Raw bytes: nothing here asks the (absent) Schema Registry.
    let codec = Arc::new(AvroCodec::new("http://127.0.0.1:9").unwrap());
    let producer = Producer::new(&kafka, codec.clone()).unwrap();
    producer
        .send_bytes(&topic, Some(b"k"), b"over tls", OwnedHeaders::new())
        .await
        .expect("an acknowledged produce over SASL_SSL");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let consumer = ConsumerLoop::new(
        &kafka,
        unique("secured-group"),
        vec![topic.clone()],
        producer,
    );
    let consuming = tokio::spawn(consumer.run(Payloads(tx), cancel.clone()));
    assert_eq!(next(&mut rx, "the record over SASL_SSL").await, b"over tls");
    cancel.cancel();
    consuming.await.unwrap().unwrap();

    // The broker refuses a wrong password: no topic is made, no record accepted.
    let wrong = KafkaConfig {
        delivery_timeout_ms: 10_000,
        ..secured("not-the-password")
    };
    let refused = Producer::new(&wrong, codec.clone())
        .unwrap()
        .send_bytes(&topic, None, b"refused", OwnedHeaders::new())
        .await
        .expect_err("a wrong password is refused");
    // librdkafka retries a failed authentication until the record's delivery timeout.
    assert!(refused.to_string().contains("timed out"), "{refused}");

    // OAUTHBEARER: a token of the OpenID Connect provider (client credentials), which the
    // broker checks against the provider's JWKS.
    let client_secret = var("MLOPS_TEST_OIDC_CLIENT_SECRET");
    let oidc = KafkaConfig {
        sasl_mechanism: Some("OAUTHBEARER".to_owned()),
        sasl_username: None,
        sasl_password: None,
        oauthbearer_token_endpoint_url: Some(var("MLOPS_TEST_OIDC_TOKEN_URL")),
        oauthbearer_client_id: Some(var("MLOPS_TEST_OIDC_CLIENT_ID")),
        oauthbearer_client_secret: Some(mlops_runtime::Secret::new(client_secret.clone())),
        oauthbearer_scope: Some("kafka".to_owned()),
        ..secured(&password)
    };
    assert!(oidc.validate().is_empty(), "{:?}", oidc.validate());
    assert!(!format!("{oidc:?}").contains(&client_secret));
    Producer::new(&oidc, codec.clone())
        .unwrap()
        .send_bytes(&topic, Some(b"k"), b"over oauth", OwnedHeaders::new())
        .await
        .expect("an acknowledged produce with an OIDC token");
    let guessed = KafkaConfig {
        oauthbearer_client_secret: Some(mlops_runtime::Secret::new("guessed")),
        delivery_timeout_ms: 10_000,
        ..oidc.clone()
    };
    Producer::new(&guessed, codec)
        .unwrap()
        .send_bytes(&topic, None, b"refused", OwnedHeaders::new())
        .await
        .expect_err("no token for a wrong client secret, no record");

    let stored = mlops_kafka::read_partition(&kafka, &topic, 0, None, WAIT)
        .await
        .unwrap();
    assert_eq!(
        stored,
        [b"over tls".to_vec(), b"over oauth".to_vec()],
        "only the authenticated records"
    );
}

/// A pattern subscription follows the topics that appear: a member that had its
/// partitions revoked for a new matching topic gets them back (with the new topic's), and
/// records of the old and the new topic keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pattern_subscription_keeps_consuming_when_a_matching_topic_appears() {
    init();
    for broker in brokers().await {
        let s = setup(broker).await;
        let kind = s.broker.kind;
        let prefix = unique("pattern");
        let (first, second) = (format!("{prefix}.first"), format!("{prefix}.second"));
        ensure_topics(&s.kafka, &[TopicSpec::new(&first, 2)])
            .await
            .expect("topic");
        let send = async |topic: &str, feature: &str| {
            s.producer
                .send_event(topic, None, &drift_event(feature), OwnedHeaders::new())
                .await
                .unwrap();
        };
        send(&first, "before").await;

        let pattern = format!("^{}\\..+", regex_escape(&prefix));
        let (mut rx, cancel, task) = collecting(&s, &unique("group"), vec![pattern]);
        let (_, event, _) = next(&mut rx, "the first topic's record").await;
        assert_eq!(event.features[0].feature, "before", "{kind}");

        ensure_topics(&s.kafka, &[TopicSpec::new(&second, 2)])
            .await
            .expect("topic");
        send(&second, "new topic").await;
        send(&first, "old topic").await;
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (_, event, _) = next(&mut rx, "records after the new topic appeared").await;
            seen.push(event.features[0].feature.clone());
        }
        seen.sort();
        assert_eq!(seen, ["new topic", "old topic"], "{kind}");

        cancel.cancel();
        task.await.unwrap().expect("consumer loop ends cleanly");
    }
}

fn regex_escape(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            let special = !c.is_ascii_alphanumeric() && c != '_';
            special.then_some('\\').into_iter().chain([c])
        })
        .collect()
}
