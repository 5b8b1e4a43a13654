//! The feature store end to end: events through the ingestion API, a feature view computed by
//! the feature service's stream job, online lookups, labels from Kafka, and
//! point-in-time-correct training snapshots.

// Tests drive the services from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use mlops_events::topics;
use mlops_integration_tests::{
    TestService, assert_routes_served, ingestion_config,
    platform::{MINUTE, POLL, Platform, T0, payment},
};
use mlops_kafka::{OwnedHeaders, Producer};
use mlops_testkit::unique;
use polars::prelude::*;
use rdkafka::Message;
use reqwest::StatusCode;
use serde_json::{Value, json};

fn cell(frame: &DataFrame, label_id: &str, column: &str) -> AnyValue<'static> {
    let row = frame
        .clone()
        .lazy()
        .filter(col("label_id").eq(lit(label_id)))
        .collect()
        .unwrap();
    assert_eq!(row.height(), 1, "one row for label {label_id}");
    row.column(column).unwrap().get(0).unwrap().into_static()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn training_sets_are_point_in_time_correct_and_snapshots_are_stable() {
    let p = Platform::start().await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");
    assert_eq!(declared["version"], 1);
    assert_eq!(declared["topic"], format!("features.{view}"));
    // Declaring the same spec again changes nothing.
    let (status, again) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!((status, &again["version"]), (StatusCode::OK, &json!(1)));

    p.events(&[
        payment("t1", "c1", 0, 10.0, "EUR"),
        payment("t3", "c2", 5, 7.0, "EUR"),
        payment("t2", "c1", 30, 20.0, "AED"),
    ])
    .await;
    // The future, as seen from a label at minute 60: a value the join must never leak.
    p.events(&[payment("t4", "c1", 80, 1000.0, "EUR")]).await;

    let online = p.online_at(&view, 1, "c1", T0 + 80 * MINUTE).await;
    assert_eq!(online["features"]["amount"], 1000.0);
    assert_eq!(
        online["features"]["amount_sum"], 1020.0,
        "(20, 80]: 20 + 1000"
    );
    assert_eq!(online["features"]["payments"], 2);
    assert_eq!(online["view_version"], 1);
    p.online_at(&view, 1, "c2", T0 + 5 * MINUTE).await;
    let (status, lookup) = p
        .post(
            &format!("/v1/feature-views/{view}/entities:lookup"),
            &json!({"entity_ids": ["c2", "nobody"]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(lookup["results"][0]["features"]["amount"], 7.0);
    assert_eq!(
        lookup["results"][1],
        json!({"entity_id": "nobody", "found": false})
    );
    let (status, missing) = p
        .get(&format!("/v1/feature-views/{view}/entities/nobody"))
        .await;
    assert_eq!(
        (status, missing["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("entity_not_found"))
    );

    // The rows also went to features.<view>, typed by the registered derived schema.
    let rows = mlops_integration_tests::read_topic(
        &p.broker.bootstrap_servers,
        &format!("features.{view}"),
        4,
    )
    .await;
    let codec = mlops_integration_tests::codec(&p.registry.url);
    let mut entities = Vec::new();
    for row in &rows {
        let decoded = codec.decode_record(row.payload().unwrap()).await.unwrap();
        assert_eq!(
            decoded.name.as_deref(),
            Some(format!("io.mlops.features.{view}").as_str())
        );
        entities.push(String::from_utf8(row.key().unwrap().to_vec()).unwrap());
    }
    entities.sort();
    assert_eq!(entities, ["c1", "c1", "c1", "c2"]);

    // An event 110 minutes behind the newest is past the 10 minute lateness: dead-lettered.
    p.events(&[payment("t5", "c1", -30, 5.0, "EUR")]).await;
    let dead = mlops_integration_tests::read_topic(
        &p.broker.bootstrap_servers,
        &topics::dead_letter(&format!("raw.{}", p.dataset)),
        1,
    )
    .await;
    let class = dead[0]
        .headers()
        .and_then(|h| {
            use rdkafka::message::Headers;
            h.iter()
                .find(|h| h.key == "dlq.error.class")
                .and_then(|h| h.value.map(<[u8]>::to_vec))
        })
        .unwrap();
    assert_eq!(class, b"late");

    p.labels(&[
        ("l-60", "c1", T0 + 60 * MINUTE, 1.0),
        ("l-30", "c1", T0 + 30 * MINUTE, 0.0),
        ("l-early", "c2", T0, 0.0),
    ])
    .await;
    let request = json!({"view": view});
    let (status, manifest) = p.training_set(&request, 3).await;
    assert_eq!(status, StatusCode::CREATED, "{manifest}");
    let id = manifest["id"].as_str().unwrap().to_owned();
    assert_eq!(manifest["view_version"], 1);
    assert_eq!(
        manifest["time_range"],
        json!({"start": T0, "end": T0 + 60 * MINUTE})
    );
    let amount_stats = &manifest["statistics"]["amount"];
    assert_eq!(amount_stats["kind"], "numeric");
    assert!(
        (amount_stats["null_rate"].as_f64().unwrap() - 1.0 / 3.0).abs() < 1e-9,
        "{amount_stats}"
    );
    assert_eq!(
        manifest["statistics"]["currency"]["frequencies"],
        json!({"AED": 2})
    );
    assert_eq!(manifest["fitted"]["amount"]["impute"]["value"], 20.0);
    assert_eq!(
        manifest["features"],
        json!([
            "amount",
            "currency__AED",
            "currency__unknown",
            "amount_sum",
            "payments",
            "amount_max"
        ])
    );

    let data = p.snapshot_data(&id).await;
    // At minute 60 the customer's latest event is minute 30: its values, never minute 90's.
    assert_eq!(
        cell(&data, "l-60", "feature_time"),
        AnyValue::Int64(T0 + 30 * MINUTE)
    );
    assert_eq!(cell(&data, "l-60", "amount_sum"), AnyValue::Float64(30.0));
    assert_eq!(cell(&data, "l-60", "amount_max"), AnyValue::Float64(20.0));
    // A label at exactly an event's time sees that event.
    assert_eq!(
        cell(&data, "l-30", "feature_time"),
        AnyValue::Int64(T0 + 30 * MINUTE)
    );
    // Before the entity's first event there is nothing to see; the fitted mean fills in.
    assert_eq!(cell(&data, "l-early", "feature_time"), AnyValue::Null);
    assert_eq!(cell(&data, "l-early", "amount_sum"), AnyValue::Null);
    assert_eq!(
        cell(&data, "l-early", "amount"),
        AnyValue::Float64(0.0),
        "mean-imputed, then z-scored"
    );
    assert_eq!(
        cell(&data, "l-early", "currency__unknown"),
        AnyValue::Int32(1)
    );
    assert_eq!(cell(&data, "l-60", "currency__AED"), AnyValue::Int32(1));

    // The same request gives the same snapshot; it is listed and fetched by id.
    let (status, same) = p.post("/v1/training-sets", &request).await;
    assert_eq!((status, &same["id"]), (StatusCode::OK, &json!(id)));
    let (_, listed) = p.get("/v1/training-sets").await;
    assert!(
        listed["training_sets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["id"] == id.as_str())
    );
    let (status, fetched) = p.get(&format!("/v1/training-sets/{id}")).await;
    assert_eq!((status, &fetched), (StatusCode::OK, &manifest));

    // A changed view is a new version, computed from the start, with new snapshot ids.
    let (status, v2) = p.post("/v1/feature-views", &p.view_spec(&view, "2h")).await;
    assert_eq!((status, &v2["version"]), (StatusCode::CREATED, &json!(2)));
    let online = p.online_at(&view, 2, "c1", T0 + 80 * MINUTE).await;
    assert_eq!(
        online["features"]["amount_sum"], 1030.0,
        "(-40, 80]: 10 + 20 + 1000"
    );
    let (status, newer) = p.training_set(&request, 3).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(newer["view_version"], 2);
    assert_ne!(newer["id"], json!(id));
    let (status, old) = p
        .post(
            "/v1/training-sets",
            &json!({"view": view, "view_version": 1}),
        )
        .await;
    assert_eq!(
        (status, &old["id"]),
        (StatusCode::OK, &json!(id)),
        "version 1 still builds the same snapshot"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_feature_views_are_refused_with_every_field_at_fault() {
    let p = Platform::start().await;
    let (status, body) = p
        .post(
            "/v1/feature-views",
            &json!({
                "name": "bad",
                "source": p.dataset,
                "entity_key": "customer",
                "event_time": "ts",
                "features": [{"name": "x", "column": "amount", "expr": "amount + 1"}],
                "aggregations": [{"name": "s", "function": "sum", "window": "1 hour"}]
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let fields: Vec<&str> = body["error"]["fields"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "features[0].expr",
            "aggregations[0].column",
            "aggregations[0].window"
        ]
    );

    // Fields the source dataset does not have are named, with what it has.
    let (status, body) = p
        .post(
            "/v1/feature-views",
            &json!({"name": "bad", "source": p.dataset, "entity_key": "customer", "event_time": "ts",
                    "features": [{"name": "amount"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "entity_key");
    assert!(
        body["error"]["fields"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("has no field \"customer\"")
    );

    let (status, body) = p
        .post(
            "/v1/feature-views",
            &json!({"name": "bad", "source": "no_such_dataset", "entity_key": "k", "event_time": "ts",
                    "features": [{"name": "amount"}]}),
        )
        .await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::UNPROCESSABLE_ENTITY, Some("unknown_source"))
    );

    let (status, body) = p.post("/v1/training-sets", &json!({"view": "nope"})).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("view_not_found"))
    );

    // Memory is bounded by configuration, not by what is declared: a window the service
    // could not keep in memory is refused, naming the setting.
    let (status, body) = p
        .post(
            "/v1/feature-views",
            &json!({"name": "huge", "source": p.dataset, "entity_key": "customer_id",
                    "event_time": "ts", "allowed_lateness": "1d",
                    "aggregations": [
                        {"name": "n_1h", "function": "count", "window": "1h"},
                        {"name": "n_forever", "function": "count", "window": "100000d"}]}),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let field = &body["error"]["fields"][0];
    assert_eq!(field["field"], "aggregations[1].window", "{body}");
    let reason = field["reason"].as_str().unwrap();
    assert!(
        reason.contains("100000d plus the allowed lateness 1d")
            && reason.contains("feature.max_window"),
        "{reason}"
    );
    // And one lookup asks for at most 10,000 entities.
    let view = unique("bounded").replace('-', "_");
    let (status, body) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert!(status.is_success(), "{body}");
    let ids: Vec<String> = (0..10_001).map(|i| format!("c-{i}")).collect();
    let (status, body) = p
        .post(
            &format!("/v1/feature-views/{view}/entities:lookup"),
            &json!({"entity_ids": ids}),
        )
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["fields"][0]["field"], "entity_ids");
    let (status, body) = p
        .post(
            &format!("/v1/feature-views/{view}/entities:lookup"),
            &json!({"entity_ids": ids[..10_000]}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

/// A record whose schema the feature service has never seen arrives while the Schema
/// Registry is down: the view's batch fails (visible in `/metrics`) and is retried from
/// its checkpoint, so once the registry is back the row is computed. Skipping it would
/// have checkpointed past a valid record and lost it for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_registry_outage_delays_feature_rows_but_loses_none() {
    use apache_avro::{Schema, types::Value as Avro};
    let mut p = Platform::start().await;
    let view = unique("outage").replace('-', "_");
    let (status, _) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED);
    let subject = format!("raw.{}-value", p.dataset);
    let latest: Value = p
        .http
        .get(format!(
            "{}/subjects/{subject}/versions/latest",
            p.registry.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let schema = Schema::parse_str(latest["schema"].as_str().unwrap()).unwrap();
    let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
        .build()
        .unwrap()
        .write_value_to_vec(Avro::Record(vec![
            ("txn_id".into(), Avro::String("outage-1".into())),
            ("customer_id".into(), Avro::String("c-outage".into())),
            ("amount".into(), Avro::Double(42.0)),
            ("currency".into(), Avro::String("AED".into())),
            ("ts".into(), Avro::TimestampMillis(T0)),
        ]))
        .unwrap();
    let payload = mlops_schema::frame(latest["id"].as_u64().unwrap() as u32, &body);

    p.registry.pause().await;
    let kafka = mlops_kafka::KafkaConfig::with_bootstrap(&p.broker.bootstrap_servers);
    let producer = Producer::new(
        &kafka,
        std::sync::Arc::new(mlops_integration_tests::codec(&p.registry.url)),
    )
    .unwrap();
    producer
        .send_bytes(
            &format!("raw.{}", p.dataset),
            Some(b"c-outage"),
            &payload,
            OwnedHeaders::new(),
        )
        .await
        .unwrap();
    // The job tries the batch, cannot decode it and reports itself failing.
    let failing = format!("view {view} v1");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = mlops_integration_tests::metrics(&p.http, &p.feature.url).await;
        if metrics.lines().any(|line| {
            line.starts_with("mlops_feature_stream_failing{")
                && line.contains(&failing)
                && line.ends_with(" 1")
        }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the view never reported the failed batch"
        );
        tokio::time::sleep(POLL).await;
    }
    p.registry.resume().await;
    let online = p.online_at(&view, 1, "c-outage", T0).await;
    assert_eq!(online["features"]["amount_sum"], 42.0, "{online}");
}

/// `frame` repeated `copies` times, each copy a different set of entities (and labels):
/// the same shape as what the platform wrote, at a size a real history reaches.
fn amplified(frame: DataFrame, copies: usize) -> DataFrame {
    let height = frame.height();
    let rows: Vec<IdxSize> = (0..copies).flat_map(|_| 0..height as IdxSize).collect();
    let mut big = frame.take(&IdxCa::from_vec("rows".into(), rows)).unwrap();
    let copy = |row: usize| row / height;
    for name in ["entity_id", "label_id"] {
        let Ok(column) = big.column(name) else {
            continue;
        };
        let renamed: Vec<String> = column
            .str()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(row, value)| format!("{}-{}", value.unwrap_or_default(), copy(row)))
            .collect();
        big.with_column(Column::new(name.into(), renamed)).unwrap();
    }
    // Feature rows are told apart by their source position, so each copy gets its own;
    // labels by their id, and they keep the positions they were received at (a training
    // set reads only labels the labels topic held when it was asked for).
    let labels = big.column("label_id").is_ok();
    if !labels && let Ok(column) = big.column("source_offset") {
        let shifted: Vec<Option<i64>> = column
            .i64()
            .unwrap()
            .iter()
            .enumerate()
            .map(|(row, offset)| offset.map(|o| o + copy(row) as i64 * 1_000_000))
            .collect();
        big.with_column(Column::new("source_offset".into(), shifted))
            .unwrap();
    }
    big
}

/// Building a training set is CPU work on the CPU pool: the service's async runtime — its
/// own, with one worker, so that work held on it would stop everything else — keeps
/// answering `/healthz` while a large set is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_answers_while_a_large_training_set_is_built() {
    let p = Platform::start_with_feature_workers(Some(1)).await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");
    p.events(&[
        payment("t1", "c1", 0, 10.0, "EUR"),
        payment("t2", "c2", 5, 7.0, "AED"),
    ])
    .await;
    p.online_at(&view, 1, "c2", T0 + 5 * MINUTE).await;
    p.labels(&[
        ("l1", "c1", T0 + MINUTE, 1.0),
        ("l2", "c2", T0 + 6 * MINUTE, 0.0),
    ])
    .await;
    let request = json!({"view": view});
    p.training_set(&request, 2).await;

    // The same history, 500,000 times over, written where the service keeps it.
    const COPIES: usize = 500_000;
    let store = feature::store::FeatureStore::open(
        &p.dir.path().join("feature-store").display().to_string(),
    )
    .unwrap();
    let offline = format!("offline/{view}/v1/");
    for prefix in [offline.as_str(), feature::labels::LABELS_PREFIX] {
        let frame = store.read_frames(prefix).await.unwrap().expect("rows");
        let big = amplified(frame, COPIES);
        store
            .put_batch_by_date(prefix, &big, 999_999_999)
            .await
            .unwrap();
    }

    let build = {
        let (http, url) = (
            p.http.clone(),
            format!("{}/v1/training-sets", p.feature.url),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let response = http.post(url).json(&request).send().await.unwrap();
            let status = response.status();
            let body: Value = response.json().await.unwrap();
            (status, body, started.elapsed())
        })
    };
    let mut worst = Duration::ZERO;
    let mut answers = 0;
    while !build.is_finished() {
        let started = Instant::now();
        let health = p
            .http
            .get(format!("{}/healthz", p.feature.url))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        worst = worst.max(started.elapsed());
        answers += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (status, body, took) = build.await.unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["rows"], 2 + 2 * COPIES, "{body}");
    assert!(
        took > Duration::from_secs(1),
        "the set took {took:?}: too small to show anything"
    );
    assert!(answers >= 5, "{answers} health answers in {took:?}");
    assert!(
        worst < Duration::from_millis(250),
        "/healthz took up to {worst:?} while the set was built ({took:?})"
    );
}

/// Labels posted over HTTP to ingestion reach the feature service and the snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn labels_posted_over_http_reach_the_training_snapshot() {
    let p = Platform::start().await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");
    p.events(&[
        payment("t1", "c1", 0, 10.0, "EUR"),
        payment("t2", "c2", 5, 7.0, "AED"),
    ])
    .await;
    p.online_at(&view, 1, "c2", T0 + 5 * MINUTE).await;
    let response = p
        .http
        .post(format!(
            "{}/v1/datasets/{}/labels",
            p.ingestion.url, p.dataset
        ))
        .header("content-type", "application/x-ndjson")
        .body(format!(
            "{}\n{}\n",
            json!({"entity_id": "c1", "label": true, "event_time": T0 + MINUTE}),
            json!({"entity_id": "c2", "label": false, "event_time": T0 + 6 * MINUTE})
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let (status, body) = p.training_set(&json!({"view": view}), 2).await;
    assert!(status.is_success(), "{body}");
    let data = p.snapshot_data(body["id"].as_str().unwrap()).await;
    let labels: Vec<Option<f64>> = data.column("label").unwrap().f64().unwrap().to_vec();
    assert_eq!(labels, [Some(1.0), Some(0.0)], "booleans train as 1 and 0");
}

/// Read-your-writes: a training set asked for right after its events and labels were
/// accepted holds every label, each joined to its own event — never to the entity's
/// previous one because the view or the labels had not caught up yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_training_set_asked_for_at_once_holds_every_label_joined_to_its_own_event() {
    let p = Platform::start().await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");
    const EVENTS: i64 = 2_000;
    // 40 customers, each paying every 40 minutes: the entity's previous payment always
    // exists, with another amount, so a stale join shows.
    let events: Vec<Value> = (0..EVENTS)
        .map(|i| {
            payment(
                &format!("t{i}"),
                &format!("c{}", i % 40),
                i,
                i as f64,
                "EUR",
            )
        })
        .collect();
    for chunk in events.chunks(500) {
        p.events(chunk).await;
    }
    let labels: Vec<(String, String, i64, f64)> = (0..EVENTS)
        .map(|i| {
            (
                format!("l{i}"),
                format!("c{}", i % 40),
                T0 + i * MINUTE,
                i as f64,
            )
        })
        .collect();
    let labels: Vec<(&str, &str, i64, f64)> = labels
        .iter()
        .map(|(id, entity, time, value)| (id.as_str(), entity.as_str(), *time, *value))
        .collect();
    p.labels(&labels).await;
    let (status, body) = p.post("/v1/training-sets", &json!({"view": view})).await;
    assert_eq!(status, StatusCode::CREATED, "{}", body["message"]);
    assert_eq!(
        body["rows"], EVENTS,
        "rows in a training set asked for at once"
    );
    let data = p.snapshot_data(body["id"].as_str().unwrap()).await;
    let amounts = data.column("raw.amount").unwrap().f64().unwrap().to_vec();
    let labels = data.column("label").unwrap().f64().unwrap().to_vec();
    let mismatched = amounts
        .iter()
        .zip(&labels)
        .filter(|(amount, label)| amount != label)
        .count();
    assert_eq!(mismatched, 0, "labels joined to another event's features");
}

/// The route tables (one per service, the role each route requires) list exactly routes the
/// services serve: each answers from its handler, not with the router's bare 404 or 405.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_route_in_the_role_tables_is_served() {
    let p = Platform::start().await;
    for (url, table) in [
        (&p.ingestion.url, ingestion::api::ROUTES),
        (&p.feature.url, feature::api::ROUTES),
        (&p.registry.url, registry::models::api::ROUTES),
    ] {
        assert_routes_served(&p.http, url, table).await;
    }
}

/// The right to be forgotten: `DELETE /v1/datasets/{name}/entities/{id}` removes the
/// entity from the online store, and no training set built afterwards holds its rows or
/// its labels, while every other entity stays; the erasure is audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_erased_entity_leaves_the_online_store_and_every_later_training_set() {
    let p = Platform::start().await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");
    p.events(&[
        payment("t1", "c1", 0, 10.0, "EUR"),
        payment("t2", "c2", 1, 7.0, "EUR"),
    ])
    .await;
    p.online_at(&view, 1, "c1", T0).await;
    p.online_at(&view, 1, "c2", T0 + MINUTE).await;
    p.labels(&[
        ("l1", "c1", T0 + 10 * MINUTE, 1.0),
        ("l2", "c2", T0 + 10 * MINUTE, 0.0),
    ])
    .await;
    let (status, before) = p.training_set(&json!({"view": view}), 2).await;
    assert!(status.is_success(), "{before}");

    let erased = p
        .http
        .delete(format!(
            "{}/v1/datasets/{}/entities/c1",
            p.ingestion.url, p.dataset
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(erased.status(), StatusCode::ACCEPTED);
    let erased: Value = erased.json().await.unwrap();
    assert_eq!(erased["topic"], format!("raw.{}", p.dataset));

    let path = format!("/v1/feature-views/{view}/entities/c1");
    let deadline = Instant::now() + Duration::from_secs(60);
    while p.get(&path).await.0 != StatusCode::NOT_FOUND {
        assert!(
            Instant::now() < deadline,
            "c1 still online after its erasure"
        );
        tokio::time::sleep(POLL).await;
    }
    assert_eq!(
        p.get(&format!("/v1/feature-views/{view}/entities/c2"))
            .await
            .0,
        StatusCode::OK
    );
    // Only c2 is left to train on: one row, none of c1's.
    let (status, after) = p.training_set(&json!({"view": view}), 1).await;
    assert!(status.is_success(), "{after}");
    let data = p.snapshot_data(after["id"].as_str().unwrap()).await;
    let ids = data.column("entity_id").unwrap().str().unwrap();
    let entities: Vec<Option<&str>> = (0..ids.len()).map(|i| ids.get(i)).collect();
    assert_eq!(entities, [Some("c2")]);

    // The erasure is in the audit trail, with who asked.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, audit) = mlops_integration_tests::get_json(
            &p.http,
            &format!("{}/v1/audit?action=dataset.erase_entity", p.registry.url),
        )
        .await;
        if let Some(record) = audit["records"].as_array().and_then(|r| r.first()) {
            assert_eq!(
                record["resource"],
                format!("datasets/{}/entities/c1", p.dataset)
            );
            assert_eq!(record["actor"], "test-admin");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no audit record of the erasure: {audit}"
        );
        tokio::time::sleep(POLL).await;
    }

    // Asking to erase in a dataset that does not exist is refused, naming it.
    let unknown = p
        .http
        .delete(format!("{}/v1/datasets/nope/entities/c1", p.ingestion.url))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
    assert!(unknown.text().await.unwrap().contains("nope"));
}

/// Residency: a record of another region reaching the raw topic (a producer writing to
/// Kafka directly) is dead-lettered with the reason and computes no feature; records of
/// this service's region flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_of_another_region_are_refused_by_the_feature_service() {
    use mlops_kafka::{Header, Headers, KafkaConfig};
    let p = Platform::start_in_region("eu").await;
    let view = unique("spend").replace('-', "_");
    let (status, declared) = p.post("/v1/feature-views", &p.view_spec(&view, "1h")).await;
    assert_eq!(status, StatusCode::CREATED, "{declared}");

    // A payment of region "ae", framed with the dataset's own schema, sent straight to the
    // raw topic; then one of this service's region for the same customer.
    let topic = topics::raw(&p.dataset);
    let (_, latest) = mlops_integration_tests::get_json(
        &p.http,
        &format!("{}/subjects/{topic}-value/versions/latest", p.registry.url),
    )
    .await;
    let schema = apache_avro::Schema::parse_str(latest["schema"].as_str().unwrap()).unwrap();
    let frame = |amount: f64, minute: i64| {
        let value = apache_avro::types::Value::Record(vec![
            (
                "txn_id".into(),
                apache_avro::types::Value::String(format!("t{minute}")),
            ),
            (
                "customer_id".into(),
                apache_avro::types::Value::String("c-ae".into()),
            ),
            ("amount".into(), apache_avro::types::Value::Double(amount)),
            (
                "currency".into(),
                apache_avro::types::Value::String("EUR".into()),
            ),
            (
                "ts".into(),
                apache_avro::types::Value::TimestampMillis(T0 + minute * MINUTE),
            ),
        ]);
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|w| w.write_value_to_vec(value))
            .unwrap();
        mlops_schema::frame(latest["id"].as_u64().unwrap() as u32, &body)
    };
    let codec = std::sync::Arc::new(mlops_integration_tests::codec(&p.registry.url));
    let producer = Producer::new(
        &KafkaConfig {
            bootstrap_servers: p.broker.bootstrap_servers.clone(),
            ..Default::default()
        },
        codec,
    )
    .unwrap();
    for (region, amount, minute) in [("ae", 1000.0, 0), ("eu", 5.0, 1)] {
        let headers = OwnedHeaders::new().insert(Header {
            key: topics::REGION_HEADER,
            value: Some(region),
        });
        producer
            .send_bytes(&topic, Some(b"c-ae"), &frame(amount, minute), headers)
            .await
            .unwrap();
    }

    // Only the "eu" payment counts.
    let online = p.online_at(&view, 1, "c-ae", T0 + MINUTE).await;
    assert_eq!(online["features"]["payments"], 1, "{online}");
    assert_eq!(online["features"]["amount_sum"], 5.0, "{online}");
    // The "ae" one is on the dead-letter topic, with the reason.
    let dead = mlops_integration_tests::read_topic(
        &p.broker.bootstrap_servers,
        &topics::dead_letter(&topic),
        1,
    )
    .await;
    let reason = dead[0]
        .headers()
        .and_then(|h| {
            (0..h.count())
                .map(|i| h.get(i))
                .find(|h| h.key == "dlq.reason")
                .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
        })
        .unwrap_or_default();
    assert!(reason.contains("region \"ae\""), "{reason}");
    // The feature row computed from the "eu" payment carries its region on, so that a
    // consumer of another region refuses it in turn.
    let rows = mlops_integration_tests::read_topic(
        &p.broker.bootstrap_servers,
        &format!("features.{view}"),
        1,
    )
    .await;
    let region = rows[0].headers().and_then(|h| {
        (0..h.count())
            .map(|i| h.get(i))
            .find(|h| h.key == topics::REGION_HEADER)
            .and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned()))
    });
    assert_eq!(region.as_deref(), Some("eu"));
}

/// Started while its broker does not answer, the feature service serves at once: its
/// health answers, its readiness names the broker, and it stops cleanly. (It used to
/// create the labels topic before serving: its port stayed dark until that timed out,
/// then the service exited.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn started_while_the_broker_is_down_it_serves_and_says_why_it_is_not_ready() {
    let dir = mlops_testkit::temp_dir();
    let nowhere = format!("127.0.0.1:{}", mlops_testkit::free_port());
    let common = ingestion_config(dir.path(), &nowhere, "http://127.0.0.1:9").common;
    let feature = TestService::feature(feature::Config {
        common,
        feature: feature::Settings {
            intake_group: unique("intake"),
            labels_group: unique("labels"),
            ..Default::default()
        },
    })
    .await;
    let ready = reqwest::get(format!("{}/readyz", feature.url))
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let ready = ready.text().await.unwrap();
    assert!(ready.contains("broker"), "{ready}");
    feature.stop().await;
}
