//! The story `mlops demo` tells once the platform is ready, through the public APIs only:
//! a dataset is declared, events are published (one of them invalid), a feature view
//! computes windows over them in streaming, and the online store serves each customer's
//! latest vector; then ground truth arrives through the labels API, a model is declared
//! and trained on the point-in-time snapshot, passes its gate and is registered — signed,
//! in production (in canary on a second run) — and announced on `models.lifecycle`; serving
//! answers with it. Then the loop closes by itself (`closed_loop`). Fixed event times make
//! a second run recompute the same features.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::platform::Layout;

pub(crate) const DATASET: &str = "demo_payments";
pub(crate) const VIEW: &str = "demo_spend";
pub(crate) const MODEL: &str = "demo_big_spender";
/// Payments of at least this much are the positive class of the demo's model.
pub(crate) const BIG: f64 = 30.0;
pub(crate) const CUSTOMERS: [&str; 3] = ["c-1", "c-2", "c-3"];
pub(crate) const EVENTS_PER_CUSTOMER: i64 = 20;
/// 2026-11-26T00:00:00Z.
pub(crate) const T0: i64 = 1_795_651_200_000;
pub(crate) const MINUTE: i64 = 60_000;

/// Runs the story's steps (numbered from `first` out of `total`), each naming itself when
/// it fails.
pub(crate) async fn story(
    layout: &Layout,
    deadline: Instant,
    first: usize,
    total: usize,
) -> Result<(), String> {
    let http = crate::status::http(layout);
    let ingestion = layout.url("ingestion");
    let feature = layout.url("feature");
    let training = layout.url("training");
    let registry = layout.url("registry");
    let serving = layout.url("serving");
    let step = |n: usize, what: &str| println!("mlops demo: step {}/{total} — {what}", first + n);

    step(
        0,
        "declare the dataset `demo_payments` (schema registered, topics created)",
    );
    let declared = call(
        &http,
        &format!("{ingestion}/v1/datasets"),
        &json!({
            "name": DATASET, "key": "customer_id", "event_time": "ts", "event_id": "txn_id",
            "partitions": 3, "rules": {"amount": {"min": 0}},
            "schema": {"type": "record", "name": "Payment", "namespace": "demo", "fields": [
                {"name": "txn_id", "type": "string"},
                {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
        }),
    )
    .await
    .map_err(|e| format!("step 'declare dataset' failed: {e}"))?;
    println!(
        "mlops demo:   topic {}, schema id {}",
        declared["topic"], declared["schema_id"]
    );

    step(
        1,
        "declare the feature view `demo_spend` (1 h sliding windows per customer)",
    );
    let view = call(
        &http,
        &format!("{feature}/v1/feature-views"),
        &json!({
            "name": VIEW, "source": DATASET, "entity_key": "customer_id", "event_time": "ts",
            "allowed_lateness": "10m",
            "features": [{"name": "amount"}],
            "aggregations": [
                {"name": "payments_1h", "function": "count", "window": "1h"},
                {"name": "amount_sum_1h", "column": "amount", "function": "sum", "window": "1h"},
                {"name": "amount_mean_1h", "column": "amount", "function": "mean", "window": "1h"}]
        }),
    )
    .await
    .map_err(|e| format!("step 'declare feature view' failed: {e}"))?;
    println!(
        "mlops demo:   version {}, rows on {}",
        view["version"], view["topic"]
    );

    step(2, "publish events, one of them invalid");
    let mut events: Vec<Value> = (0..EVENTS_PER_CUSTOMER)
        .flat_map(|i| {
            CUSTOMERS.iter().enumerate().map(move |(c, customer)| {
                json!({"txn_id": format!("demo-{customer}-{i}"), "customer_id": customer,
                       "amount": (10 * (c as i64 + 1) + i) as f64, "ts": T0 + i * 5 * MINUTE})
            })
        })
        .collect();
    events.push(json!({"txn_id": "demo-bad", "customer_id": "c-1", "amount": -5.0, "ts": T0}));
    let published = call(
        &http,
        &format!("{ingestion}/v1/datasets/{DATASET}/events"),
        &Value::Array(events),
    )
    .await
    .map_err(|e| format!("step 'publish events' failed: {e}"))?;
    let refused = published["results"]
        .as_array()
        .and_then(|results| results.iter().find(|r| r["status"] == "rejected"))
        .map(|r| r["errors"].to_string())
        .unwrap_or_default();
    println!(
        "mlops demo:   accepted {} (duplicates of an earlier run: {}), rejected {}: {refused}",
        published["accepted"], published["duplicates"], published["rejected"]
    );
    if published["rejected"] != 1 {
        return Err(format!(
            "step 'publish events' failed: expected exactly the invalid event rejected: {published}"
        ));
    }

    step(
        3,
        "read each customer's latest features from the online store",
    );
    let last_time = T0 + (EVENTS_PER_CUSTOMER - 1) * 5 * MINUTE;
    let lookup = json!({"entity_ids": CUSTOMERS});
    let url = format!("{feature}/v1/feature-views/{VIEW}/entities:lookup");
    let results = loop {
        let answer = call(&http, &url, &lookup).await;
        if let Ok(body) = &answer
            && let Some(results) = body["results"].as_array()
            && results.iter().all(|r| r["event_time"] == last_time)
        {
            break results.clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'online features' failed: the stream job did not catch up in time; last answer: {answer:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for result in &results {
        println!(
            "mlops demo:   {} {}",
            result["entity_id"].as_str().unwrap_or_default(),
            result["features"]
        );
    }

    step(
        4,
        "ground truth through the labels API: was each payment a big one?",
    );
    let labels: Vec<Value> = (0..EVENTS_PER_CUSTOMER)
        .flat_map(|i| {
            CUSTOMERS.iter().enumerate().map(move |(c, customer)| {
                let amount = (10 * (c as i64 + 1) + i) as f64;
                json!({"entity_id": customer, "label": amount >= BIG,
                       "event_time": T0 + i * 5 * MINUTE + MINUTE,
                       "label_id": format!("demo-label-{customer}-{i}")})
            })
        })
        .collect();
    let labelled = call(
        &http,
        &format!("{ingestion}/v1/datasets/{DATASET}/labels"),
        &Value::Array(labels.clone()),
    )
    .await
    .map_err(|e| format!("step 'labels' failed: {e}"))?;
    println!(
        "mlops demo:   accepted {} (duplicates of an earlier run: {})",
        labelled["accepted"], labelled["duplicates"]
    );
    // Training reads the offline store: wait until every label has reached it.
    let rows = loop {
        let set = call(
            &http,
            &format!("{feature}/v1/training-sets"),
            &json!({"view": VIEW}),
        )
        .await;
        if let Ok(body) = &set
            // At least: an earlier run's traffic left labels of its own.
            && body["rows"].as_u64() >= Some(labels.len() as u64)
        {
            break body["rows"].clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'labels' failed: the labels did not reach the training set in time; last answer: {set:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!("mlops demo:   training set of {rows} labelled rows, point-in-time correct");

    step(
        5,
        "declare the model `demo_big_spender` and train it (search, validation, gate)",
    );
    call(
        &http,
        &format!("{training}/v1/models/specs"),
        &json!({
            "name": MODEL, "view": VIEW, "task": "binary_classification",
            "primary_metric": "accuracy",
            "algorithms": {"logistic_regression": {"alpha": [0.01, 1.0]},
                           "decision_tree": {"max_depth": [2, 4]}},
            "gate": {"min": 0.8, "max_loss": 0.05}
        }),
    )
    .await
    .map_err(|e| format!("step 'train' failed: {e}"))?;
    let accepted = call(
        &http,
        &format!("{training}/v1/training-runs"),
        &json!({"model": MODEL, "requested_by": "mlops demo"}),
    )
    .await
    .map_err(|e| format!("step 'train' failed: {e}"))?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    let run = loop {
        let run = get(&http, &format!("{training}/v1/training-runs/{id}")).await;
        if let Ok(body) = &run
            && !matches!(body["status"].as_str(), Some("pending" | "running"))
        {
            break body.clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'train' failed: run {id} did not finish in time; last answer: {run:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "mlops demo:   run {id}: {} after {} trials; gate {}",
        run["status"],
        run["trials"].as_array().map_or(0, Vec::len),
        run["gate"]
    );
    if run["status"] != "succeeded" {
        return Err(format!("step 'train' failed: {run}"));
    }

    step(
        6,
        "the registry: a signed version, its stage, and its event on models.lifecycle",
    );
    let version = &run["registered_version"];
    let model = loop {
        let model = get(&http, &format!("{registry}/v1/models/{MODEL}")).await;
        if let Ok(body) = &model
            && body["lifecycle"]["published_sequence"] == body["lifecycle"]["last_sequence"]
        {
            break body.clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'registry' failed: models.lifecycle did not catch up in time; last answer: {model:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let details = get(
        &http,
        &format!("{registry}/v1/models/{MODEL}/versions/{version}"),
    )
    .await
    .map_err(|e| format!("step 'registry' failed: {e}"))?;
    println!(
        "mlops demo:   version {version} is {} (production: version {}), artifact sha256 {}",
        details["stage"], model["production"], details["sha256"]
    );
    println!(
        "mlops demo:   models.lifecycle: {} events published for {MODEL}",
        model["lifecycle"]["published_sequence"]
    );

    step(
        7,
        "serving answers with it: by entity id (online features) and over the Open Inference Protocol",
    );
    // Loaded once its metadata answers (as production, or as a canary a request may or may
    // not be routed to).
    let loaded_url = format!("{serving}/v2/models/{MODEL}/versions/{version}");
    let predict_url = format!("{serving}/v1/models/{MODEL}:predict");
    let predicted = loop {
        let loaded = get(&http, &loaded_url).await;
        let answer = call(&http, &predict_url, &json!({"entity_id": "c-3"})).await;
        if loaded.is_ok()
            && let Ok(body) = &answer
        {
            break body.clone();
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'serving' failed: version {version} was not served in time; last answer: {loaded:?} {answer:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    println!(
        "mlops demo:   c-3 -> version {} ({}): {}",
        predicted["version"], predicted["role"], predicted["prediction"]
    );
    let inferred = call(
        &http,
        &format!("{serving}/v2/models/{MODEL}/infer"),
        &json!({"id": "demo-1", "inputs": [
            {"name": "amount", "shape": [1], "datatype": "FP64", "data": [45.0]},
            {"name": "payments_1h", "shape": [1], "datatype": "FP64", "data": [12.0]},
            {"name": "amount_sum_1h", "shape": [1], "datatype": "FP64", "data": [480.0]},
            {"name": "amount_mean_1h", "shape": [1], "datatype": "FP64", "data": [40.0]}]}),
    )
    .await
    .map_err(|e| format!("step 'serving' failed: {e}"))?;
    println!(
        "mlops demo:   POST /v2/models/{MODEL}/infer -> {}",
        inferred["outputs"]
    );
    crate::closed_loop::story(layout, deadline, first + 8, total).await
}

/// POSTs `body` as JSON; the answer's JSON when the status is a success.
pub(crate) async fn call(http: &reqwest::Client, url: &str, body: &Value) -> Result<Value, String> {
    answer(http.post(url).json(body), url).await
}

/// GETs `url`; the answer's JSON when the status is a success.
pub(crate) async fn get(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    answer(http.get(url), url).await
}

async fn answer(request: reqwest::RequestBuilder, url: &str) -> Result<Value, String> {
    let response = request
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if status.is_success() {
        Ok(answer)
    } else {
        Err(format!("{url}: {status} {answer}"))
    }
}
