//! The ingestion API as producers meet it: datasets, validated events over HTTP with exact
//! error bodies, Avro on the raw topic that Confluent's own Python consumer reads back,
//! idempotent retries across a restart, schema evolution, residency and backpressure.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::time::Duration;

use mlops_events::{DeadLetter, topics};
use mlops_integration_tests::{TestIngestion, TestRegistry, ingestion_config};
use mlops_testkit::{TestBroker, brokers, unique};
use rdkafka::{
    ClientConfig, Message,
    consumer::{Consumer, StreamConsumer},
    producer::{FutureProducer, FutureRecord},
    util::Timeout,
};
use reqwest::{Client, StatusCode};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(60);

fn payments(name: &str) -> Value {
    json!({
        "name": name,
        "schema": {"type": "record", "name": "Payment", "namespace": "shop", "fields": [
            {"name": "txn_id", "type": "string"},
            {"name": "customer_id", "type": "string"},
            {"name": "amount", "type": "double"},
            {"name": "currency", "type": "string"},
            {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}},
            {"name": "is_fraud", "type": ["null", "boolean"], "default": null}
        ]},
        "key": "customer_id", "event_time": "ts", "event_id": "txn_id", "labels": ["is_fraud"],
        "partitions": 3,
        "rules": {"amount": {"min": 0}, "currency": {"allowed": ["AED", "EUR"]}}
    })
}

fn payment(i: usize) -> Value {
    json!({"txn_id": format!("t-{i}"), "customer_id": format!("c-{}", i % 17), "amount": i as f64 * 1.5,
           "currency": if i.is_multiple_of(2) { "AED" } else { "EUR" }, "ts": 1_795_687_200_000_i64 + i as i64})
}

struct Platform {
    broker: TestBroker,
    registry: TestRegistry,
    dir: tempfile::TempDir,
    http: Client,
}

impl Platform {
    async fn new(broker: TestBroker) -> Self {
        mlops_testkit::init_logs();
        let registry = TestRegistry::start(&broker.bootstrap_servers, None).await;
        Self {
            broker,
            registry,
            dir: mlops_testkit::temp_dir(),
            http: mlops_integration_tests::client(),
        }
    }

    fn config(&self) -> ingestion::Config {
        ingestion_config(
            self.dir.path(),
            &self.broker.bootstrap_servers,
            &self.registry.url,
        )
    }

    async fn post(
        &self,
        url: &str,
        content_type: &str,
        body: String,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let response = self
            .http
            .post(url)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.json().await.unwrap_or(Value::Null);
        (status, body, headers)
    }

    async fn declare(&self, ingestion: &TestIngestion, spec: &Value) -> (StatusCode, Value) {
        let (status, body, _) = self
            .post(
                &format!("{}/v1/datasets", ingestion.url),
                "application/json",
                spec.to_string(),
            )
            .await;
        (status, body)
    }

    async fn send(
        &self,
        ingestion: &TestIngestion,
        dataset: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        self.send_with(ingestion, dataset, "", body).await
    }

    /// Posts events with a query string (`?atomic=true`, or empty).
    async fn send_with(
        &self,
        ingestion: &TestIngestion,
        dataset: &str,
        query: &str,
        body: &Value,
    ) -> (StatusCode, Value) {
        let (status, body, _) = self
            .post(
                &format!("{}/v1/datasets/{dataset}/events{query}", ingestion.url),
                "application/json",
                body.to_string(),
            )
            .await;
        (status, body)
    }
}

const SENTINEL: &[u8] = b"__end_of_count__";

/// Records on `topic` in total, exactly: a sentinel is appended to every partition, then
/// the topic is read from the start until each sentinel is seen. (Not from watermarks:
/// Tansu's ListOffsets can report a high watermark behind records it already serves.)
async fn records_on(bootstrap: &str, topic: &str, partitions: i32) -> usize {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    for partition in 0..partitions {
        producer
            .send(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(SENTINEL),
                Timeout::After(WAIT),
            )
            .await
            .expect("sentinel acknowledged");
    }
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique("counter"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut open: std::collections::HashSet<i32> = (0..partitions).collect();
    let mut count = 0;
    while !open.is_empty() {
        let message = tokio::time::timeout(WAIT, consumer.recv())
            .await
            .unwrap_or_else(|_| panic!("sentinels of {open:?} not seen on {topic}"))
            .expect("consume");
        if message.payload() == Some(SENTINEL) {
            open.remove(&message.partition());
        } else {
            count += 1;
        }
    }
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn datasets_are_declared_with_their_topics_and_schema() {
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        let (status, body) = p.declare(&ingestion, &payments(&name)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let topic = format!("raw.{name}");
        assert_eq!(body["name"], json!(name));
        assert_eq!(body["topic"], json!(topic));
        assert_eq!(body["dlq_topic"], json!(format!("{topic}.dlq")));
        assert_eq!(body["subject"], json!(format!("{topic}-value")));
        assert_eq!(body["version"], 1);
        let id = body["schema_id"].as_i64().expect("schema id");
        let latest: Value = mlops_integration_tests::get(format!(
            "{}/subjects/{topic}-value/versions/latest",
            p.registry.url
        ))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
        assert_eq!(latest["id"], id);

        // Declaring the same dataset again changes nothing.
        let (status, again) = p.declare(&ingestion, &payments(&name)).await;
        assert_eq!(
            (status, again["version"].clone()),
            (StatusCode::OK, json!(1))
        );

        let listed: Value = mlops_integration_tests::get(format!("{}/v1/datasets", ingestion.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(
            listed
                .as_array()
                .unwrap()
                .iter()
                .any(|d| d["name"] == json!(name))
        );
        let one = mlops_integration_tests::get(format!("{}/v1/datasets/{name}", ingestion.url))
            .await
            .unwrap();
        assert_eq!(one.status(), StatusCode::OK);
        let missing = mlops_integration_tests::get(format!("{}/v1/datasets/nope", ingestion.url))
            .await
            .unwrap();
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        let body: Value = missing.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": {"code": "unknown_dataset", "message": "no dataset named \"nope\""}})
        );

        // A declaration with mistakes names each one.
        let mut bad = payments(&unique("bad"));
        bad["key"] = json!("nobody");
        bad["rules"] = json!({"ghost": {"min": 1}});
        let (status, body) = p.declare(&ingestion, &bad).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["code"], "invalid_dataset");
        assert_eq!(
            body["error"]["fields"],
            json!([
                {"field": "key", "reason": "field \"nobody\" is not in the schema"},
                {"field": "rules.ghost", "reason": "field \"ghost\" is not in the schema"}
            ])
        );
        ingestion.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mixed_batch_accepts_the_good_records_and_dead_letters_the_bad() {
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        p.declare(&ingestion, &payments(&name)).await;
        let mut bad_type = payment(2);
        bad_type["amount"] = json!("12a");
        let mut bad_rule = payment(3);
        bad_rule["currency"] = json!("USD");
        let (status, body) = p
            .send(
                &ingestion,
                &name,
                &json!([payment(0), bad_type, payment(1), bad_rule]),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            (body["accepted"].clone(), body["rejected"].clone()),
            (json!(2), json!(2))
        );
        let results = body["results"].as_array().unwrap();
        assert_eq!(results[0]["status"], "accepted");
        assert!(results[0]["partition"].is_i64() && results[0]["offset"].is_i64());
        assert_eq!(
            results[1],
            json!({"index": 1, "status": "rejected",
                   "errors": [{"field": "amount", "reason": "expected double, got string \"12a\""}]})
        );
        assert_eq!(results[2]["status"], "accepted");
        assert_eq!(
            results[3],
            json!({"index": 3, "status": "rejected",
                   "errors": [{"field": "currency", "reason": "\"USD\" is not one of the allowed values [\"AED\",\"EUR\"]"}]})
        );

        // The accepted ones are Confluent-framed Avro, keyed by entity.
        let codec = mlops_integration_tests::codec(&p.registry.url);
        let topic = format!("raw.{name}");
        let records =
            mlops_integration_tests::read_topic(&p.broker.bootstrap_servers, &topic, 2).await;
        let mut seen = Vec::new();
        for record in &records {
            let decoded = codec
                .decode_record(record.payload().unwrap())
                .await
                .expect("decodes");
            assert_eq!(decoded.name.as_deref(), Some("shop.Payment"));
            seen.push(String::from_utf8(record.key().unwrap().to_vec()).unwrap());
        }
        seen.sort();
        assert_eq!(seen, ["c-0", "c-1"]);
        assert_eq!(records_on(&p.broker.bootstrap_servers, &topic, 3).await, 2);

        // The rejected ones are in the dead-letter topic, with the reason.
        let dead = mlops_integration_tests::read_topic(
            &p.broker.bootstrap_servers,
            &topics::dead_letter(&topic),
            2,
        )
        .await;
        let mut reasons = Vec::new();
        for message in &dead {
            let letter: DeadLetter = codec
                .decode(message.payload().unwrap())
                .await
                .expect("DeadLetter");
            let original: Value = serde_json::from_slice(&letter.value.unwrap().0).unwrap();
            assert_eq!(letter.error_class, "validation");
            reasons.push((
                original["txn_id"].as_str().unwrap().to_owned(),
                letter.reason,
            ));
        }
        reasons.sort();
        assert_eq!(
            reasons,
            [
                (
                    "t-2".to_owned(),
                    "amount: expected double, got string \"12a\"".to_owned()
                ),
                (
                    "t-3".to_owned(),
                    "currency: \"USD\" is not one of the allowed values [\"AED\",\"EUR\"]"
                        .to_owned()
                ),
            ]
        );

        // All-or-nothing on request: one bad record refuses the batch, nothing is written.
        let (status, body) = p
            .send_with(
                &ingestion,
                &name,
                "?atomic=true",
                &json!([payment(10), {"txn_id": "x"}]),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
        assert_eq!(body["results"][0]["status"], "skipped");
        assert_eq!(body["results"][1]["status"], "rejected");
        assert_eq!(records_on(&p.broker.bootstrap_servers, &topic, 3).await, 2);
        ingestion.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_refusal_has_its_status_and_exact_body() {
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let mut config = p.config();
    config.ingestion.max_body_bytes = 4096;
    config.ingestion.region = Some("eu".into());
    let ingestion = TestIngestion::start(config).await;
    let name = unique("payments");
    p.declare(&ingestion, &payments(&name)).await;
    let events = format!("{}/v1/datasets/{name}/events", ingestion.url);

    let (status, body, _) = p
        .post(
            &format!("{}/v1/datasets/ghost/events", ingestion.url),
            "application/json",
            "{}".into(),
        )
        .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::NOT_FOUND,
            json!({"error": {"code": "unknown_dataset", "message": "no dataset named \"ghost\""}})
        )
    );

    let (status, body, _) = p.post(&events, "text/plain", payment(1).to_string()).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(body["error"]["code"], "unsupported_content_type");
    assert_eq!(
        body["error"]["message"],
        "content type \"text/plain\" is not accepted; send application/json (one object or an array) or application/x-ndjson"
    );

    let (status, body, _) = p.post(&events, "application/json", "x".repeat(5000)).await;
    assert_eq!(
        (status, body),
        (
            StatusCode::PAYLOAD_TOO_LARGE,
            json!({"error": {"code": "body_too_large", "message": "request body is larger than 4096 bytes"}})
        )
    );

    let (status, body, _) = p
        .post(&events, "application/json", "{\"txn_id\": ".into())
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "invalid_json");

    let (status, body, _) = p
        .post(
            &events,
            "application/json",
            json!({"txn_id": "t", "amount": true}).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        body,
        json!({"accepted": 0, "rejected": 1, "duplicates": 0, "results": [{"index": 0, "status": "rejected", "errors": [
            {"field": "customer_id", "reason": "required field is missing"},
            {"field": "amount", "reason": "expected double, got boolean true"},
            {"field": "currency", "reason": "required field is missing"},
            {"field": "ts", "reason": "required field is missing"}
        ]}]})
    );

    // NDJSON: one broken line is one rejected record; the others go through.
    let ndjson = format!("{}\nnot json\n{}\n", payment(1), payment(2));
    let (status, body, _) = p.post(&events, "application/x-ndjson", ndjson).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][1]["status"], "rejected");
    assert!(
        body["results"][1]["errors"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("invalid JSON line")
    );
    assert_eq!(body["accepted"], 2);

    // Residency: a dataset of another region is refused, and never reaches a topic.
    let mut foreign = payments(&unique("uae"));
    foreign["region"] = json!("ae");
    let (status, body) = p.declare(&ingestion, &foreign).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body["error"],
        json!({"code": "wrong_region", "message": "dataset data must stay in region \"ae\"; this instance serves region \"eu\""})
    );

    let metrics = mlops_integration_tests::get(format!("{}/metrics", ingestion.url))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for reason in [
        "unknown_dataset",
        "unsupported_content_type",
        "body_too_large",
        "invalid_json",
        "wrong_region",
    ] {
        if reason == "wrong_region" {
            continue; // counted for events only; dataset declarations are not events
        }
        assert!(
            metrics.contains(&format!(
                "mlops_ingestion_rejections_total{{reason=\"{reason}\"}} 1"
            )),
            "{reason}: {metrics}"
        );
    }
    assert!(
        metrics.contains("mlops_ingestion_rejections_total{reason=\"invalid_record\"} 2"),
        "{metrics}"
    );
    ingestion.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retries_are_idempotent_across_a_restart() {
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        p.declare(&ingestion, &payments(&name)).await;
        let (status, first) = p.send(&ingestion, &name, &payment(7)).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert_eq!(first["results"][0]["status"], "accepted");

        // The same event twice in one batch is written once.
        let (_, batch) = p
            .send(&ingestion, &name, &json!([payment(8), payment(8)]))
            .await;
        assert_eq!(batch["results"][0]["status"], "accepted");
        assert_eq!(batch["results"][1]["status"], "duplicate");
        assert_eq!(batch["results"][1]["offset"], batch["results"][0]["offset"]);

        let (_, produced) = p.send(&ingestion, &name, &payment(9)).await;
        assert_eq!(produced["results"][0]["status"], "accepted");
        // Another request, finished later on the same partition (same customer).
        let (_, later) = p.send(&ingestion, &name, &payment(26)).await;
        assert_eq!(
            later["results"][0]["partition"],
            produced["results"][0]["partition"]
        );
        ingestion.stop().await;
        // A process killed after the broker acknowledged an event but before it
        // remembered its id leaves exactly this: the record in the topic, the id unknown,
        // while a concurrent request that finished after it was remembered. The client
        // got no answer and retries it after the restart.
        forget_accepted(&p, &name, "t-9").await;
        let ingestion = TestIngestion::start(p.config()).await;
        let (_, retried) = p.send(&ingestion, &name, &payment(9)).await;
        assert_eq!(
            retried["results"][0]["status"], "duplicate",
            "a retry of an event produced before a crash: {retried}"
        );
        assert_eq!(
            retried["results"][0]["offset"],
            produced["results"][0]["offset"]
        );
        // What it held was read back with it: other content under its id is refused.
        let mut changed = payment(9);
        changed["amount"] = json!(99.0);
        let (status, refused) = p.send(&ingestion, &name, &changed).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(refused["results"][0]["errors"][0]["field"], "txn_id");
        let (status, again) = p.send(&ingestion, &name, &payment(7)).await;
        assert_eq!(status, StatusCode::OK, "{again}");
        assert_eq!(again["results"][0]["status"], "duplicate");
        assert_eq!(
            again["results"][0]["partition"],
            first["results"][0]["partition"]
        );
        assert_eq!(again["results"][0]["offset"], first["results"][0]["offset"]);
        assert_eq!(
            records_on(&p.broker.bootstrap_servers, &format!("raw.{name}"), 3).await,
            4
        );
        ingestion.stop().await;
    }
}

/// An id is a promise about content: a retry repeats it and is answered `duplicate`, but a
/// record that reuses an accepted id for other content (a correction sent under the old
/// id, two producers' ids colliding) would be lost that way. It is refused, naming the id
/// and what holds it, and dead-lettered as a conflict — in a later request, within one
/// request, and under an `Idempotency-Key`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_id_reused_for_other_content_is_refused_and_dead_lettered() {
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        p.declare(&ingestion, &payments(&name)).await;
        let (status, first) = p.send(&ingestion, &name, &payment(40)).await;
        assert_eq!(status, StatusCode::OK, "{first}");
        let at = &first["results"][0];

        let mut corrected = payment(40);
        corrected["amount"] = json!(1_000.0);
        let (status, refused) = p.send(&ingestion, &name, &corrected).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
        assert_eq!(
            refused["results"][0]["errors"],
            json!([{"field": "txn_id", "reason": format!(
                "id \"t-40\" is already taken by the event accepted at partition {}, offset {}, with other content: this event is not written; a retry must repeat the content, a new event needs a new id",
                at["partition"], at["offset"]
            )}])
        );
        // The retry itself is still a duplicate.
        let (status, retried) = p.send(&ingestion, &name, &payment(40)).await;
        assert_eq!(status, StatusCode::OK, "{retried}");
        assert_eq!(retried["results"][0]["status"], "duplicate");

        // Within one request: the first copy is written, the other content refused.
        let mut other = payment(41);
        other["currency"] = json!("AED");
        other["amount"] = json!(7.0);
        let (status, batch) = p
            .send(&ingestion, &name, &json!([payment(41), other, payment(41)]))
            .await;
        assert_eq!(status, StatusCode::OK, "{batch}");
        let statuses: Vec<&str> = batch["results"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["status"].as_str().unwrap())
            .collect();
        assert_eq!(statuses, ["accepted", "rejected", "duplicate"], "{batch}");
        let reason = batch["results"][1]["errors"][0]["reason"].as_str().unwrap();
        assert!(
            reason.contains("taken by event 0 of this request"),
            "{reason}"
        );

        // A single event's Idempotency-Key is its id when the dataset declares none.
        let keyed = unique("keyed");
        let mut spec = payments(&keyed);
        spec.as_object_mut().unwrap().remove("event_id");
        p.declare(&ingestion, &spec).await;
        let url = format!("{}/v1/datasets/{keyed}/events", ingestion.url);
        let send_keyed = |event: Value| {
            p.http
                .post(&url)
                .header("idempotency-key", "order-1")
                .json(&event)
                .send()
        };
        let answer = send_keyed(payment(50)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::OK);
        let answer = send_keyed(payment(51)).await.unwrap();
        assert_eq!(answer.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let body: Value = answer.json().await.unwrap();
        assert_eq!(
            body["results"][0]["errors"][0]["field"], "Idempotency-Key",
            "{body}"
        );

        // Written once each; the refused records wait in the dead-letter topic.
        let bootstrap = &p.broker.bootstrap_servers;
        let topic = format!("raw.{name}");
        assert_eq!(records_on(bootstrap, &topic, 3).await, 2);
        assert_eq!(records_on(bootstrap, &format!("raw.{keyed}"), 3).await, 1);
        let codec = mlops_integration_tests::codec(&p.registry.url);
        let dead =
            mlops_integration_tests::read_topic(bootstrap, &topics::dead_letter(&topic), 2).await;
        let mut refused = Vec::new();
        for message in &dead {
            let letter: DeadLetter = codec.decode(message.payload().unwrap()).await.unwrap();
            assert_eq!(letter.error_class, "conflict");
            let original: Value = serde_json::from_slice(&letter.value.unwrap().0).unwrap();
            assert!(
                letter.reason.starts_with("txn_id: id "),
                "{}",
                letter.reason
            );
            refused.push(original["amount"].as_f64().unwrap());
        }
        refused.sort_by(f64::total_cmp);
        assert_eq!(refused, [7.0, 1_000.0]);
        // Counted apart from invalid records, for an alert of their own.
        let metrics = mlops_integration_tests::get(format!("{}/metrics", ingestion.url))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("mlops_ingestion_rejections_total{reason=\"id_conflict\"} 3")
                && metrics
                    .contains("mlops_ingestion_rejections_total{reason=\"invalid_record\"} 0"),
            "{metrics}"
        );
        ingestion.stop().await;
    }
}

/// Forgets that `event_id` of `dataset` was accepted, as a process killed between the
/// broker's acknowledgement and remembering the id would have left it.
async fn forget_accepted(p: &Platform, dataset: &str, event_id: &str) {
    let url = p.config().common.database_url("ingestion");
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&url).await.unwrap();
    let forgotten =
        sqlx::query("DELETE FROM ingestion_accepted WHERE dataset = $1 AND event_id = $2")
            .bind(dataset)
            .bind(event_id)
            .execute(&pool)
            .await
            .unwrap();
    assert_eq!(forgotten.rows_affected(), 1);
    pool.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn schemas_evolve_only_compatibly_and_both_versions_flow() {
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let ingestion = TestIngestion::start(p.config()).await;
    let name = unique("payments");
    let (_, v1) = p.declare(&ingestion, &payments(&name)).await;
    p.send(&ingestion, &name, &payment(1)).await;

    let mut v2_spec = payments(&name);
    v2_spec["schema"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "channel", "type": "string", "default": "web"}));
    let (status, v2) = p.declare(&ingestion, &v2_spec).await;
    assert_eq!(status, StatusCode::CREATED, "{v2}");
    assert_eq!(v2["version"], 2);
    assert_ne!(v2["schema_id"], v1["schema_id"]);

    let mut breaking = payments(&name);
    breaking["schema"]["fields"]
        .as_array_mut()
        .unwrap()
        .push(json!({"name": "merchant", "type": "string"}));
    let (status, refused) = p.declare(&ingestion, &breaking).await;
    assert_eq!(status, StatusCode::CONFLICT, "{refused}");
    assert_eq!(refused["error"]["code"], "incompatible_schema");
    assert!(
        refused["error"]["message"]
            .as_str()
            .unwrap()
            .contains("incompatible"),
        "{refused}"
    );

    let mut new_shape = payment(2);
    new_shape["channel"] = json!("pos");
    let (status, body) = p
        .send(&ingestion, &name, &json!([payment(3), new_shape]))
        .await;
    assert_eq!(
        (status, body["accepted"].clone()),
        (StatusCode::OK, json!(2)),
        "{body}"
    );

    let codec = mlops_integration_tests::codec(&p.registry.url);
    let mut ids = Vec::new();
    for record in
        mlops_integration_tests::read_topic(&p.broker.bootstrap_servers, &format!("raw.{name}"), 3)
            .await
    {
        let decoded = codec
            .decode_record(record.payload().unwrap())
            .await
            .expect("every version decodes");
        ids.push(decoded.schema_id);
    }
    ids.sort();
    assert_eq!(
        ids,
        [
            v1["schema_id"].as_u64().unwrap() as u32,
            v2["schema_id"].as_u64().unwrap() as u32,
            v2["schema_id"].as_u64().unwrap() as u32
        ]
    );
    ingestion.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_queue_answers_429_and_an_unreachable_broker_503() {
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let ingestion = TestIngestion::start(p.config()).await;
    let name = unique("payments");
    p.declare(&ingestion, &payments(&name)).await;
    ingestion.stop().await;

    let mut config = p.config();
    config.ingestion.max_in_flight = 1;
    let ingestion = TestIngestion::start(config).await;
    let (status, body, headers) = p
        .post(
            &format!("{}/v1/datasets/{name}/events", ingestion.url),
            "application/json",
            json!([payment(1), payment(2)]).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "backpressure");
    assert_eq!(
        headers.get("retry-after").map(|v| v.to_str().unwrap()),
        Some("1")
    );
    ingestion.stop().await;

    // Started with no broker to reach: it serves, and answers 503 with the reason.
    let mut config = p.config();
    config.common.kafka.bootstrap_servers = format!("127.0.0.1:{}", mlops_testkit::free_port());
    config.common.kafka.delivery_timeout_ms = 1500;
    let ingestion = TestIngestion::start(config).await;
    let (status, body, headers) = p
        .post(
            &format!("{}/v1/datasets/{name}/events", ingestion.url),
            "application/json",
            payment(3).to_string(),
        )
        .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "recovering", "{body}");
    assert!(headers.contains_key("retry-after"));
    ingestion.stop().await;
}

/// Request bodies count against a byte budget from their declared length, before they
/// are read: a slow 40 KiB upload holds its share, so another 30 KiB request over the
/// 64 KiB budget gets 429 at once, and the slow one still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn request_bodies_in_flight_are_bounded_in_bytes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let mut config = p.config();
    config.ingestion.max_body_bytes = 64 * 1024;
    config.ingestion.max_body_bytes_in_flight = 64 * 1024;
    let ingestion = TestIngestion::start(config).await;
    let name = unique("payments");
    p.declare(&ingestion, &payments(&name)).await;

    let line = |i: usize| payment(i).to_string();
    let mut slow_body = String::new();
    let mut i = 0;
    while slow_body.len() < 40 * 1024 {
        slow_body.push_str(&line(i));
        slow_body.push('\n');
        i += 1;
    }
    let addr = ingestion.url.trim_start_matches("http://").to_owned();
    let head = format!(
        "POST /v1/datasets/{name}/events HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/x-ndjson\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        mlops_integration_tests::auth::tokens().admin,
        slow_body.len()
    );
    // Its headers and the first KiB of its body: the rest waits.
    let start_slow = async || {
        let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
        slow.write_all(head.as_bytes()).await.unwrap();
        slow.write_all(&slow_body.as_bytes()[..1024]).await.unwrap();
        slow
    };
    let mut slow = start_slow().await;

    let mut other = String::new();
    let mut j = 100_000;
    while other.len() < 30 * 1024 {
        other.push_str(&line(j));
        other.push('\n');
        j += 1;
    }
    let url = format!("{}/v1/datasets/{name}/events", ingestion.url);
    // Until the slow request's share is held (its headers read): the last answer (or the
    // client's error) is what a failure shows. A probe still in flight when the slow
    // request's headers are read holds 30 KiB, so the slow one is then refused itself
    // (a loaded machine reads them late): it is started again.
    mlops_testkit::until(
        "the second request is refused",
        Duration::from_secs(30),
        async || {
            let mut early = [0u8; 64];
            match slow.try_read(&mut early) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                answered => {
                    slow = start_slow().await;
                    let early = match answered {
                        Ok(n) => String::from_utf8_lossy(&early[..n]).into_owned(),
                        Err(e) => e.to_string(),
                    };
                    return Err(format!("the slow request was answered first: {early}"));
                }
            }
            let answer = p
                .http
                .post(&url)
                .header("content-type", "application/x-ndjson")
                .body(other.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => Ok(()),
                Ok(r) => Err(format!(
                    "{}: {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )),
                Err(e) => Err(format!("{e:?}")),
            }
        },
    )
    .await;
    let (status, body, headers) = p.post(&url, "application/x-ndjson", other.clone()).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "backpressure");
    assert!(headers.contains_key("retry-after"));

    slow.write_all(&slow_body.as_bytes()[1024..]).await.unwrap();
    let mut answer = String::new();
    slow.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(&format!("\"accepted\":{i}")), "{answer}");
    // The budget is free again.
    let (status, body, _) = p.post(&url, "application/x-ndjson", other).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ingestion.stop().await;
}

/// The headline: 10,000 events over HTTP, then Confluent's own Python consumer with its
/// `SchemaRegistryClient` and `AvroDeserializer` reads exactly those events back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_thousand_events_read_back_by_confluents_python_consumer() {
    let python = mlops_integration_tests::python();
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        p.declare(&ingestion, &payments(&name)).await;
        let total = 10_000;
        for chunk in (0..total).collect::<Vec<_>>().chunks(500) {
            let lines: Vec<String> = chunk.iter().map(|i| payment(*i).to_string()).collect();
            let (status, body, _) = p
                .post(
                    &format!("{}/v1/datasets/{name}/events", ingestion.url),
                    "application/x-ndjson",
                    lines.join("\n"),
                )
                .await;
            assert_eq!(
                (status, body["accepted"].clone()),
                (StatusCode::OK, json!(chunk.len()))
            );
        }
        let topic = format!("raw.{name}");
        let output = tokio::process::Command::new(&python)
            .env(
                "MLOPS_TOKEN",
                &mlops_integration_tests::auth::tokens().admin,
            )
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/python/consume_avro.py"
            ))
            .args([
                &p.broker.bootstrap_servers,
                &p.registry.url,
                &topic,
                &total.to_string(),
                "120",
            ])
            .output()
            .await
            .expect("run the Python consumer");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        let records = report["records"].as_array().unwrap();
        assert_eq!(records.len(), total, "{}: records read back", p.broker.kind);
        let mut by_id: std::collections::HashMap<String, &Value> = std::collections::HashMap::new();
        for record in records {
            by_id.insert(record["txn_id"].as_str().unwrap().to_owned(), record);
        }
        assert_eq!(by_id.len(), total, "duplicates among the records read");
        for i in 0..total {
            let mut expected = payment(i);
            expected["is_fraud"] = Value::Null;
            assert_eq!(by_id[&format!("t-{i}")], &expected, "event {i} changed");
        }
        assert_eq!(
            records_on(&p.broker.bootstrap_servers, &topic, 3).await,
            total,
            "extra records on the topic"
        );
        ingestion.stop().await;
    }
}

/// A Confluent Python producer writes Avro straight to the raw topic, with garbage in
/// between: the feature service's intake dead-letters the garbage with its reason and
/// takes in the records before and after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_written_straight_to_kafka_are_taken_in_and_garbage_is_dead_lettered() {
    let python = mlops_integration_tests::python();
    for broker in brokers().await {
        let p = Platform::new(broker).await;
        let ingestion = TestIngestion::start(p.config()).await;
        let name = unique("payments");
        let spec = payments(&name);
        p.declare(&ingestion, &spec).await;
        let group = unique("intake");
        let feature_config = feature::Config {
            common: p.config().common,
            // A shared broker holds other tests' raw topics too: read only this one.
            feature: feature::Settings {
                intake_group: group.clone(),
                raw_topics: format!("^raw\\.{name}$"),
                ..Default::default()
            },
        };
        let feature = mlops_integration_tests::TestService::feature(feature_config).await;

        let topic = format!("raw.{name}");
        let output = tokio::process::Command::new(&python)
            .env(
                "MLOPS_TOKEN",
                &mlops_integration_tests::auth::tokens().admin,
            )
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/python/produce_avro.py"
            ))
            .args([
                &p.broker.bootstrap_servers,
                &p.registry.url,
                &topic,
                &spec["schema"].to_string(),
                &payment(1).to_string(),
                &payment(2).to_string(),
            ])
            .output()
            .await
            .expect("run the Python producer");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );

        let codec = mlops_integration_tests::codec(&p.registry.url);
        let dead = mlops_integration_tests::read_topic(
            &p.broker.bootstrap_servers,
            &topics::dead_letter(&topic),
            1,
        )
        .await;
        let letter: DeadLetter = codec
            .decode(dead[0].payload().unwrap())
            .await
            .expect("DeadLetter");
        assert_eq!(
            letter.reason,
            "unknown magic byte 0x67: not Confluent-framed Avro"
        );
        assert_eq!(letter.consumer_group.as_deref(), Some(group.as_str()));
        assert_eq!(
            letter.value.map(|v| v.0),
            Some(b"garbage, not avro".to_vec())
        );
        assert_eq!(letter.key.map(|v| v.0), Some(b"py-2".to_vec()));

        // Both Avro records were taken in: the intake counted them as processed.
        let line = format!(
            r#"mlops_consumer_records_total{{topic="{topic}",group="{group}",outcome="processed"}} 2"#
        );
        let metrics = format!("{}/metrics", feature.url);
        mlops_integration_tests::eventually(WAIT, || {
            let request = mlops_integration_tests::get(&metrics);
            let line = &line;
            async move {
                match request.await {
                    Ok(r) => r.text().await.is_ok_and(|t| t.contains(line.as_str())),
                    Err(_) => false,
                }
            }
        })
        .await
        .unwrap_or_else(|e| panic!("{}: {e}: {line}", p.broker.kind));
        feature.stop().await;
        ingestion.stop().await;
    }
}

/// Ground truth the producers' way: labels over HTTP (validated per record, refused ones
/// dead-lettered, idempotent on `label_id`) and labels inline in events of a dataset that
/// declares label fields — each reaches the `labels` topic once, as `GroundTruthLabel`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_arrive_over_http_and_inline_each_once() {
    use mlops_events::{GroundTruthLabel, LabelValue};
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let ingestion = TestIngestion::start(p.config()).await;
    let name = unique("payments");
    p.declare(&ingestion, &payments(&name)).await;

    // Inline: two events carry a label (true, false), one does not (null).
    let mut fraud = payment(0);
    fraud["is_fraud"] = json!(true);
    let mut honest = payment(1);
    honest["is_fraud"] = json!(false);
    let (status, events) = p
        .send(&ingestion, &name, &json!([fraud, honest, payment(2)]))
        .await;
    assert_eq!(status, StatusCode::OK, "{events}");
    let inline_id = |i: usize| {
        let r = &events["results"][i];
        format!("raw.{name}/{}/{}/is_fraud", r["partition"], r["offset"])
    };

    let url = format!("{}/v1/datasets/{name}/labels", ingestion.url);
    let body = json!([
        {"entity_id": "c-5", "label": 1, "event_time": "2026-11-26T10:00:00Z", "label_id": "L-1"},
        {"entity_id": "c-6", "label": "chargeback", "event_time": 1_795_687_260_000_i64, "request_id": "r-1"},
        {"label": 1, "event_time": 5},
        {"entity_id": "c-7", "label": [1], "event_time": "soon", "extra": true}
    ]);
    let (status, answer, _) = p.post(&url, "application/json", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(
        (&answer["accepted"], &answer["rejected"]),
        (&json!(2), &json!(2))
    );
    assert_eq!(
        answer["results"][2]["errors"],
        json!([{"field": "entity_id", "reason": "is required"}])
    );
    let fields: Vec<&str> = answer["results"][3]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["extra", "label", "event_time"], "{answer}");
    // The same labels again: duplicates, written once.
    let (status, again, _) = p.post(&url, "application/json", body.to_string()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        (&again["accepted"], &again["duplicates"]),
        (&json!(0), &json!(2))
    );
    // A correction under a taken label id is refused, not answered as a copy of it.
    let corrected = json!({"entity_id": "c-5", "label": 0, "event_time": "2026-11-26T10:00:00Z", "label_id": "L-1"});
    let (status, refused, _) = p
        .post(&url, "application/json", corrected.to_string())
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{refused}");
    assert_eq!(refused["results"][0]["errors"][0]["field"], "label_id");

    let bootstrap = &p.broker.bootstrap_servers;
    assert_eq!(records_on(bootstrap, topics::LABELS, 3).await, 4);
    let codec = mlops_integration_tests::codec(&p.registry.url);
    let mut labels = Vec::new();
    // Four labels and the three sentinels `records_on` appended.
    for message in mlops_integration_tests::read_topic(bootstrap, topics::LABELS, 7).await {
        if message.payload() == Some(SENTINEL) {
            continue;
        }
        let label: GroundTruthLabel = codec.decode(message.payload().unwrap()).await.unwrap();
        assert_eq!(label.dataset, name);
        assert_eq!(
            message.key(),
            Some(label.entity_id.as_bytes()),
            "keyed by entity"
        );
        labels.push((
            label.label_id,
            label.entity_id,
            label.label,
            label.request_id,
        ));
    }
    labels.sort_by(|a, b| a.0.cmp(&b.0));
    let c6 = labels
        .iter()
        .find(|l| l.1 == "c-6")
        .expect("the label without an id")
        .0
        .clone();
    let mut expected = vec![
        (
            inline_id(0),
            "c-0".to_owned(),
            LabelValue::Number(1.0),
            None,
        ),
        (
            inline_id(1),
            "c-1".to_owned(),
            LabelValue::Number(0.0),
            None,
        ),
        (
            "L-1".to_owned(),
            "c-5".to_owned(),
            LabelValue::Number(1.0),
            None,
        ),
        (
            c6,
            "c-6".to_owned(),
            LabelValue::Class("chargeback".into()),
            Some("r-1".to_owned()),
        ),
    ];
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(labels, expected);

    // The refused ones are on labels.dlq with their reasons (the two invalid ones of each
    // of the two tries), the correction as a conflict.
    let dead =
        mlops_integration_tests::read_topic(bootstrap, &topics::dead_letter(topics::LABELS), 5)
            .await;
    let mut reasons = Vec::new();
    for message in &dead {
        let letter: DeadLetter = codec.decode(message.payload().unwrap()).await.unwrap();
        reasons.push((letter.error_class, letter.reason));
    }
    assert!(
        reasons.contains(&("validation".to_owned(), "entity_id: is required".to_owned())),
        "{reasons:?}"
    );
    assert!(
        reasons.iter().any(
            |(class, reason)| class == "conflict" && reason.starts_with("label_id: id \"L-1\"")
        ),
        "{reasons:?}"
    );
    ingestion.stop().await;
}

/// The database down for ten seconds under a running ingestion service (PostgreSQL, the
/// production store of accepted ids): requests are answered 503 with `Retry-After` and
/// the reason within seconds — not held — and once the database is back the same
/// service accepts again, without a restart; nothing accepted before is lost or doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_database_outage_answers_503_fast_and_recovers_without_a_restart() {
    let postgres = mlops_integration_tests::PrivatePostgres::start();
    let p = Platform::new(mlops_testkit::tansu().await).await;
    let mut config = p.config();
    config.common.database.url = Some(postgres.url.clone());
    let ingestion = TestIngestion::start(config).await;
    let name = unique("payments");
    p.declare(&ingestion, &payments(&name)).await;
    let (status, before) = p.send(&ingestion, &name, &payment(1)).await;
    assert_eq!(status, StatusCode::OK, "{before}");

    postgres.stop();
    let url = format!("{}/v1/datasets/{name}/events", ingestion.url);
    let asked = std::time::Instant::now();
    let (status, body, headers) = p
        .post(&url, "application/json", payment(2).to_string())
        .await;
    let waited = asked.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "database_unavailable", "{body}");
    assert!(headers.contains_key("retry-after"));
    assert!(
        waited < Duration::from_secs(10),
        "held {waited:?} before answering"
    );

    postgres.resume();
    mlops_testkit::until("accepted again", Duration::from_secs(60), async || {
        let (status, body, _) = p
            .post(&url, "application/json", payment(2).to_string())
            .await;
        (status == StatusCode::OK)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    // The event accepted before the outage is still known: a retry is a duplicate.
    let (_, again) = p.send(&ingestion, &name, &payment(1)).await;
    assert_eq!(again["results"][0]["status"], "duplicate", "{again}");
    ingestion.stop().await;
}

/// The Schema Registry down under load (its process gone, its port closed): producers of a
/// declared dataset keep being accepted — its schema is known, nothing waits on the
/// registry — while what needs the registry (declaring a dataset) is answered 503 with
/// the reason and `Retry-After` at once; once it is back the same ingestion service
/// declares again without a restart, and every accepted event is on the raw topic once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_schema_registry_outage_fails_declarations_fast_and_loses_no_event() {
    use std::sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    };
    let mut p = Platform::new(mlops_testkit::tansu().await).await;
    let ingestion = TestIngestion::start(p.config()).await;
    let name = unique("payments");
    let (status, body) = p.declare(&ingestion, &payments(&name)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // The load: batches of 20 events, one after the other, until told to stop.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent) = (stop.clone(), sent.clone());
        let (http, url) = (
            p.http.clone(),
            format!("{}/v1/datasets/{name}/events", ingestion.url),
        );
        tokio::spawn(async move {
            let mut refused = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let first = sent.load(Ordering::Relaxed);
                let batch: Vec<Value> = (first..first + 20).map(payment).collect();
                let response = http.post(&url).json(&batch).send().await.expect("answer");
                let status = response.status();
                let body: Value = response.json().await.unwrap_or(Value::Null);
                let accepted = body["results"].as_array().map_or(0, |r| {
                    r.iter().filter(|r| r["status"] == "accepted").count()
                });
                if status != StatusCode::OK || accepted != 20 {
                    refused.push(format!("{status} {body}"));
                }
                sent.fetch_add(20, Ordering::Relaxed);
            }
            refused
        })
    };
    let until_sent = async |n: usize| {
        mlops_testkit::until("the load moves on", WAIT, async || {
            (sent.load(Ordering::Relaxed) >= n)
                .then_some(())
                .ok_or(format!("{} sent", sent.load(Ordering::Relaxed)))
        })
        .await;
    };
    until_sent(200).await;

    p.registry.pause().await;
    let during_from = sent.load(Ordering::Relaxed);
    let other = unique("payments");
    let asked = std::time::Instant::now();
    let (status, body, headers) = p
        .post(
            &format!("{}/v1/datasets", ingestion.url),
            "application/json",
            payments(&other).to_string(),
        )
        .await;
    let waited = asked.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(
        body["error"]["code"], "schema_registry_unavailable",
        "{body}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    assert!(
        waited < Duration::from_secs(5),
        "held {waited:?} before answering"
    );
    // The outage lasts while the load sends another 1,000 events, all of them accepted.
    until_sent(during_from + 1_000).await;
    let during = sent.load(Ordering::Relaxed) - during_from;

    p.registry.resume().await;
    let (status, body) = p.declare(&ingestion, &payments(&other)).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "declared once it is back: {body}"
    );
    let (status, body) = p.send(&ingestion, &other, &payment(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    stop.store(true, Ordering::Relaxed);
    let refused = load.await.unwrap();
    assert!(
        refused.is_empty(),
        "events refused around the outage: {:?}",
        &refused[..refused.len().min(3)]
    );
    let total = sent.load(Ordering::Relaxed);
    println!("{total} events accepted, {during} of them while the registry was down");
    assert_eq!(
        records_on(&p.broker.bootstrap_servers, &format!("raw.{name}"), 3).await,
        total,
        "every accepted event on the raw topic, once"
    );
    ingestion.stop().await;
}

/// A private broker to stall, the platform on it, and ingestion's configuration with a
/// 3 s delivery timeout (what a stalled broker's requests wait for).
async fn on_a_private_kafka() -> (PrivateKafka, Platform, ingestion::Config) {
    let kafka = PrivateKafka::start();
    let p = Platform::new(mlops_testkit::kafka_at(format!("127.0.0.1:{}", kafka.port))).await;
    let mut config = p.config();
    config.common.kafka.delivery_timeout_ms = 3_000;
    (kafka, p, config)
}

/// A private Apache Kafka broker (`tests/kafka/kafka.sh`), to stall: its JVM stopped with
/// SIGSTOP, as in a long pause or a frozen machine, and continued with SIGCONT.
struct PrivateKafka {
    dir: tempfile::TempDir,
    pid: i32,
    port: u16,
}

impl PrivateKafka {
    const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/kafka/kafka.sh");

    fn start() -> Self {
        // kafka.sh takes the port after the broker's for its controller. Both are handed
        // out by `free_port`, so no other test of this process gets the controller's: two
        // private brokers started at once once shared a port, and the second test's
        // broker (dead at its start) was taken for the first's controller.
        let port = loop {
            let port = mlops_testkit::free_port();
            if mlops_testkit::free_port() == port + 1 {
                break port;
            }
        };
        let dir = mlops_testkit::temp_dir();
        let output = std::process::Command::new(Self::SCRIPT)
            .arg("start")
            .arg(dir.path().join("kafka"))
            .arg(port.to_string())
            .output()
            .expect("run kafka.sh (Java and the jars come with tests/run.sh)");
        assert!(
            output.status.success(),
            "kafka.sh start: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let pid = std::fs::read_to_string(dir.path().join("kafka/kafka.pid"))
            .expect("kafka.pid")
            .trim()
            .parse()
            .expect("a pid");
        Self { dir, pid, port }
    }

    /// Sends `signal` (`STOP`, `CONT`) to the broker's JVM.
    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid.to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid);
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = std::process::Command::new("kill")
            .args(["-CONT", &self.pid.to_string()])
            .status();
        let _ = std::process::Command::new(Self::SCRIPT)
            .arg("stop")
            .arg(self.dir.path().join("kafka"))
            .output();
    }
}

/// Started while its broker does not answer, ingestion serves at once: an event with an
/// id is answered 503 with the reason and `Retry-After` (the raw topics' tails, which
/// hold the ids the last run produced but may not have remembered, are not read back yet,
/// so its retry could be written twice), and `/readyz` says so. Once the broker answers,
/// the same process reads them back and takes events, without a restart; the last run's
/// event, sent again, is a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn started_while_the_broker_is_down_it_answers_503_until_the_tails_are_read_back() {
    let (kafka, p, config) = on_a_private_kafka().await;
    let ingestion = TestIngestion::start(config.clone()).await;
    let name = unique("payments");
    // A broker just started may time out its first topic creation: 503, to retry.
    mlops_testkit::until("declared", WAIT, async || {
        match p.declare(&ingestion, &payments(&name)).await {
            // 200: the timed-out try had declared it after all.
            (StatusCode::CREATED | StatusCode::OK, _) => Ok(()),
            (status, body) => Err(format!("{status} {body}")),
        }
    })
    .await;
    let (status, body) = p.send(&ingestion, &name, &payment(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    ingestion.stop().await;

    kafka.signal("STOP");
    let started = std::time::Instant::now();
    let ingestion = TestIngestion::start(config).await;
    let url = format!("{}/v1/datasets/{name}/events", ingestion.url);
    let (status, body, headers) = p
        .post(&url, "application/json", payment(1).to_string())
        .await;
    let answered = started.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "recovering", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("raw topics' tails")),
        "{body}"
    );
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    // Served at once, not after the broker came back (the bound is far above the start).
    assert!(
        answered < Duration::from_secs(20),
        "answered after {answered:?}"
    );
    let ready = p
        .http
        .get(format!("{}/readyz", ingestion.url))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = ready.text().await.unwrap();
    assert!(ready.contains("recovery"), "{ready}");

    kafka.signal("CONT");
    // The client retries, as a 503 asks, until the event is taken.
    mlops_testkit::until("taken once the broker answers", WAIT, async || {
        let (status, body, _) = p
            .post(&url, "application/json", payment(1).to_string())
            .await;
        // A duplicate when an earlier try's produce timed out but was written.
        let taken = ["accepted", "duplicate"]
            .contains(&body["results"][0]["status"].as_str().unwrap_or(""));
        (status == StatusCode::OK && taken)
            .then_some(())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    let (status, body, _) = p
        .post(&url, "application/json", payment(0).to_string())
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["results"][0]["status"], "duplicate", "{body}");
    ingestion.stop().await;
}

/// The broker stalls for longer than the delivery timeout under a running ingestion
/// service: requests are answered 503 with `Retry-After` once their events could not be
/// acknowledged in time — never 200 for an unacknowledged event — and once the broker
/// continues, the same service accepts again without a restart, and every event is on the
/// raw topic exactly once — also those answered 503 that the broker had written anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stalled_broker_is_answered_503_and_recovered_from_without_a_restart() {
    let (kafka, p, config) = on_a_private_kafka().await;
    let ingestion = TestIngestion::start(config).await;
    let name = unique("payments");
    let (status, body) = p.declare(&ingestion, &payments(&name)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, body) = p.send(&ingestion, &name, &payment(0)).await;
    assert_eq!(status, StatusCode::OK, "{body}");

    kafka.signal("STOP");
    let stalled: Vec<Value> = (1..=10).map(payment).collect();
    let url = format!("{}/v1/datasets/{name}/events", ingestion.url);
    let asked = std::time::Instant::now();
    let (status, body, headers) = p
        .post(
            &url,
            "application/json",
            Value::Array(stalled.clone()).to_string(),
        )
        .await;
    let waited = asked.elapsed();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(headers.contains_key("retry-after"), "{headers:?}");
    let results = body["results"].as_array().expect("a result per event");
    assert!(
        results.iter().all(|r| r["status"] == "failed"),
        "no event of a stalled broker is accepted: {body}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "answered after {waited:?}, with a 3 s delivery timeout"
    );

    kafka.signal("CONT");
    // The client retries the same events, as a 503 asks, until they are taken.
    let retried = mlops_testkit::until("accepted again", WAIT, async || {
        let (status, body, _) = p
            .post(
                &url,
                "application/json",
                Value::Array(stalled.clone()).to_string(),
            )
            .await;
        let taken = body["results"].as_array().is_some_and(|r| {
            r.iter()
                .all(|r| r["status"] == "accepted" || r["status"] == "duplicate")
        });
        (status == StatusCode::OK && taken)
            .then_some(body.clone())
            .ok_or(format!("{status} {body}"))
    })
    .await;
    assert_eq!(retried["results"].as_array().unwrap().len(), 10);
    let (status, body) = p.send(&ingestion, &name, &payment(11)).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // An event answered 503 may have been written before the broker stalled (its request
    // was in the broker's socket): its retry is checked against the raw topic, found,
    // and answered `duplicate` instead of being written again.
    let on_topic = records_on(&p.broker.bootstrap_servers, &format!("raw.{name}"), 3).await;
    let duplicates = retried["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["status"] == "duplicate")
        .count();
    println!(
        "stalled broker: 12 events accepted, {duplicates} of the 10 retried found already written, {on_topic} records on the raw topic"
    );
    assert_eq!(on_topic, 12, "each of the 12 events once on the raw topic");
    ingestion.stop().await;
}
