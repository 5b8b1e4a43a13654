//! The second half of `mlops demo`: the loop closing by itself. Production traffic like
//! the training data flows with its outcomes arriving late, and the monitor sees nothing
//! wrong; then payments triple (three new customers arrive, their events and labels
//! ingested), the monitor publishes a drift event with its statistics, a retraining runs
//! because of it, the new version passes its gate, enters canary, is judged against
//! production on the same traffic and is promoted — with no call from here other than
//! traffic and data.
//!
//! The traffic is the feature rows the demo's events produce, scored by value through
//! `:predict` and routed by request id, so a canary gets its share; the outcomes name the
//! request they grade and go to a dataset of their own (`demo_outcomes`), so that what
//! training learns stays the demo's fixed data. Each run shifts further: run n's new
//! customers pay 3ⁿ times as much, and the earlier runs' shifted customers are part of the
//! usual traffic, as they are of the training data by then.

use std::time::Instant;

use serde_json::{Value, json};

use crate::{
    demo::{BIG, DATASET, EVENTS_PER_CUSTOMER, MINUTE, MODEL, T0, VIEW, call, get},
    platform::Layout,
};

/// Where served predictions' outcomes are reported.
const OUTCOMES: &str = "demo_outcomes";
const DAY: i64 = 24 * 60 * MINUTE;
/// Predictions between two label posts.
const BATCH: usize = 20;

/// Shift group `g` (0: the original customers): its customers, first event time and scale.
fn group(g: usize) -> (Vec<String>, i64, f64) {
    let customers = (1..=3).map(|c| format!("c-{}", 3 * g + c)).collect();
    (customers, T0 + g as i64 * DAY, 3f64.powi(g as i32))
}

/// One feature row as the view computes it: (customer, event time, amount, features).
struct Row {
    customer: String,
    event_time: i64,
    amount: f64,
    features: Value,
}

/// The rows of `customers`' payments: customer k's i-th pays `scale · (10(k+1) + i)` at
/// `start + 5i min`; the 1 h windows hold the last 12 payments.
fn rows(customers: &[String], start: i64, scale: f64) -> Vec<Row> {
    let mut out = Vec::new();
    for i in 0..EVENTS_PER_CUSTOMER {
        for (k, customer) in customers.iter().enumerate() {
            let amount = |j: i64| scale * (10 * (k as i64 + 1) + j) as f64;
            let first = (i - 11).max(0);
            let count = i - first + 1;
            let sum: f64 = (first..=i).map(amount).sum();
            out.push(Row {
                customer: customer.clone(),
                event_time: start + i * 5 * MINUTE,
                amount: amount(i),
                features: json!({"amount": amount(i), "payments_1h": count,
                                 "amount_sum_1h": sum, "amount_mean_1h": sum / count as f64}),
            });
        }
    }
    out
}

/// Scores rows in turn, posting each batch's labels with the next one.
struct Traffic {
    http: reqwest::Client,
    predict: String,
    labels: String,
    /// Makes this run's request and label ids unique: a second demo run is new traffic.
    run: i64,
    sent: usize,
    late: Vec<Value>,
    /// Versions that answered, by role.
    answered: Vec<(i64, String)>,
}

impl Traffic {
    async fn batch(&mut self, rows: &[Row]) -> Result<(), String> {
        for _ in 0..BATCH {
            let row = &rows[self.sent % rows.len()];
            let id = format!("demo-{}-{}", self.run, self.sent);
            self.sent += 1;
            let answer = call(
                &self.http,
                &self.predict,
                &json!({"features": row.features, "request_id": id}),
            )
            .await?;
            self.answered.push((
                answer["version"].as_i64().unwrap_or_default(),
                answer["role"].as_str().unwrap_or_default().to_owned(),
            ));
            // Ground truth: the entity is the row's customer, the time the payment's.
            self.late.push(
                json!({"entity_id": row.customer, "label": row.amount >= BIG,
                                  "event_time": row.event_time + MINUTE,
                                  "request_id": id, "label_id": format!("label-{id}")}),
            );
        }
        let labels = std::mem::take(&mut self.late);
        call(&self.http, &self.labels, &Value::Array(labels)).await?;
        Ok(())
    }

    /// Streams `rows` until `done` finds what it waits for, or the deadline.
    async fn until<T>(
        &mut self,
        rows: &[Row],
        deadline: Instant,
        what: &str,
        mut done: impl AsyncFnMut(&Traffic) -> Option<T>,
    ) -> Result<T, String> {
        loop {
            self.batch(rows).await?;
            if let Some(found) = done(self).await {
                return Ok(found);
            }
            if Instant::now() > deadline {
                return Err(format!("{what}: not in time ({} requests sent)", self.sent));
            }
        }
    }
}

/// The loop, as steps `first`.. of `total`, on whatever version serves now.
pub(crate) async fn story(
    layout: &Layout,
    deadline: Instant,
    first: usize,
    total: usize,
) -> Result<(), String> {
    let http = crate::status::http(layout);
    let ingestion = layout.url("ingestion");
    let training = layout.url("training");
    let registry = layout.url("registry");
    let monitoring = layout.url("monitoring");
    let step = |n: usize, what: &str| println!("mlops demo: step {}/{total} — {what}", first + n);
    let started = now_millis();
    let mut traffic = Traffic {
        http: http.clone(),
        predict: format!("{}/v1/models/{MODEL}:predict", layout.url("serving")),
        labels: format!("{ingestion}/v1/datasets/{OUTCOMES}/labels"),
        run: started,
        sent: 0,
        late: Vec::new(),
        answered: Vec::new(),
    };
    let report_url = format!("{monitoring}/v1/monitoring/models/{MODEL}");
    let model_url = format!("{registry}/v1/models/{MODEL}");
    call(
        &http,
        &format!("{ingestion}/v1/datasets"),
        &json!({
            "name": OUTCOMES, "key": "request_id", "event_time": "ts", "event_id": "request_id",
            "schema": {"type": "record", "name": "Outcome", "namespace": "demo", "fields": [
                {"name": "request_id", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}
        }),
    )
    .await
    .map_err(|e| format!("step 'traffic' failed: {e}"))?;
    // Shift groups an earlier run ingested are part of the usual data now.
    let mut groups = 1;
    while get(
        &http,
        &format!(
            "{}/v1/feature-views/{VIEW}/entities/c-{}",
            layout.url("feature"),
            3 * groups + 1
        ),
    )
    .await
    .is_ok()
    {
        groups += 1;
    }
    let usual: Vec<Row> = (0..groups)
        .flat_map(|g| {
            let (customers, start, scale) = group(g);
            rows(&customers, start, scale)
        })
        .collect();

    step(
        0,
        "production traffic like the training data, outcomes arriving late; the monitor watches",
    );
    // At least 400 requests, and until no canary is in flight (a version trained above
    // on a second run is one: the monitor judges it on this traffic).
    traffic
        .until(&usual, deadline, "step 'traffic' failed", async |t| {
            let model = get(&t.http, &model_url).await.ok()?;
            (t.sent >= 400 && model["canary"].is_null()).then_some(())
        })
        .await?;
    let production = get(&http, &model_url).await?["production"].clone();
    // The monitor reads the prediction log asynchronously (a new model's topic is found
    // by its pattern subscription within seconds): wait until it has seen every request.
    let report = loop {
        let report = get(&http, &report_url).await?;
        let seen: u64 = report["versions"].as_array().map_or(0, |v| {
            v.iter().filter_map(|v| v["predictions"].as_u64()).sum()
        });
        if seen >= traffic.sent as u64 {
            break report;
        }
        if Instant::now() > deadline {
            return Err(format!(
                "step 'traffic' failed: the monitor saw {seen} of {} predictions in time",
                traffic.sent
            ));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    };
    // The version that answered most of it (production, unless it was just promoted).
    let watched = report["versions"]
        .as_array()
        .and_then(|v| {
            v.iter()
                .max_by_key(|v| v["windows"].as_array().map_or(0, Vec::len))
        })
        .cloned()
        .unwrap_or_default();
    println!(
        "mlops demo:   {} requests; version {production} in production; the monitor saw {} predictions of version {}, {} outcomes, {} windows",
        traffic.sent,
        watched["predictions"],
        watched["version"],
        watched["labels"],
        watched["windows"].as_array().map_or(0, Vec::len)
    );
    if let Some(window) = watched["windows"].as_array().and_then(|w| w.last()) {
        print_window(window);
    }

    let (customers, start, scale) = group(groups);
    step(
        1,
        &format!(
            "the world shifts: new customers {} pay {scale} times as much",
            customers.join(", ")
        ),
    );
    let shifted = rows(&customers, start, scale);
    let events: Vec<Value> = shifted
        .iter()
        .map(|row| {
            json!({"txn_id": format!("demo-{}-{}", row.customer, row.event_time),
                   "customer_id": row.customer, "amount": row.amount, "ts": row.event_time})
        })
        .collect();
    call(
        &http,
        &format!("{ingestion}/v1/datasets/{DATASET}/events"),
        &Value::Array(events),
    )
    .await
    .map_err(|e| format!("step 'shift' failed: {e}"))?;
    let labels: Vec<Value> = shifted
        .iter()
        .map(|row| {
            json!({"entity_id": row.customer, "label": row.amount >= BIG,
                   "event_time": row.event_time + MINUTE,
                   "label_id": format!("demo-label-{}-{}", row.customer, row.event_time)})
        })
        .collect();
    call(
        &http,
        &format!("{ingestion}/v1/datasets/{DATASET}/labels"),
        &Value::Array(labels),
    )
    .await
    .map_err(|e| format!("step 'shift' failed: {e}"))?;
    let shift_started = now_millis();
    let drift = traffic
        .until(&shifted, deadline, "step 'drift' failed", async |t| {
            let report = get(&t.http, &report_url).await.ok()?;
            report["drift_events"]
                .as_array()?
                .iter()
                .rev()
                .find(|e| e["detected_at"].as_i64() > Some(shift_started))
                .cloned()
        })
        .await?;
    println!(
        "mlops demo:   drift event {} on version {}: {} severity, window of {} predictions",
        drift["event_id"], drift["model_version"], drift["severity"], drift["window_size"]
    );
    for feature in drift["features"].as_array().into_iter().flatten() {
        println!(
            "mlops demo:     {} {} = {:.4} (threshold {}{})",
            feature["feature"].as_str().unwrap_or_default(),
            feature["statistic"].as_str().unwrap_or_default(),
            feature["value"].as_f64().unwrap_or_default(),
            feature["threshold"],
            feature["p_value"]
                .as_f64()
                .map(|p| format!(", p = {p:.2e}"))
                .unwrap_or_default()
        );
    }

    step(
        2,
        "retraining, asked for by the monitor on training.requests",
    );
    let drift_id = drift["event_id"].clone();
    let runs_url = format!("{training}/v1/training-runs?model={MODEL}");
    let run = traffic
        .until(&shifted, deadline, "step 'retrain' failed", async |t| {
            let runs = get(&t.http, &runs_url).await.ok()?;
            runs["runs"]
                .as_array()?
                .iter()
                .find(|r| {
                    r["requests"]
                        .as_array()
                        .is_some_and(|q| q.iter().any(|q| q["triggering_event_id"] == drift_id))
                        && !matches!(r["status"].as_str(), Some("pending" | "running"))
                })
                .cloned()
        })
        .await?;
    println!(
        "mlops demo:   run {}: {} on {} rows; gate {}",
        run["id"], run["status"], run["rows"], run["gate"]
    );
    let Some(candidate) = run["registered_version"].as_i64() else {
        return Err(format!("step 'retrain' failed: nothing registered: {run}"));
    };

    step(
        3,
        "canary: the monitor compares it with production on the same traffic, then decides",
    );
    let promoted = traffic
        .until(&shifted, deadline, "step 'canary' failed", async |t| {
            let report = get(&t.http, &report_url).await.ok()?;
            report["canary_decisions"]
                .as_array()?
                .iter()
                .find(|d| d["canary_version"] == candidate)
                .cloned()
        })
        .await?;
    let canary_answers = traffic
        .answered
        .iter()
        .filter(|(v, r)| *v == candidate && r == "canary")
        .count();
    println!(
        "mlops demo:   version {candidate} answered {canary_answers} requests as canary; verdict {}: {}",
        promoted["decision"],
        promoted["reason"].as_str().unwrap_or_default()
    );
    if promoted["decision"] != "promote" {
        return Err(format!(
            "step 'canary' failed: the canary was not promoted: {promoted}"
        ));
    }

    step(4, "serving answers with the promoted version");
    let served = traffic
        .until(&shifted, deadline, "step 'promoted' failed", async |t| {
            let model = get(&t.http, &model_url).await.ok()?;
            let last = t.answered.last()?;
            (model["production"] == candidate && last.0 == candidate && last.1 == "production")
                .then_some(model)
        })
        .await?;
    println!(
        "mlops demo:   version {candidate} is in production (models.lifecycle: {} events for {MODEL}); loop closed {:.1} s after the drift event",
        served["lifecycle"]["published_sequence"],
        (now_millis() - drift["detected_at"].as_i64().unwrap_or_default()) as f64 / 1000.0
    );
    println!("mlops demo:   look at: {report_url}");
    println!("mlops demo:            {registry}/v1/models/{MODEL}/history");
    println!(
        "mlops demo:            {training}/v1/training-runs/{}",
        run["id"].as_str().unwrap_or_default()
    );
    Ok(())
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn print_window(window: &Value) {
    let stats: Vec<String> = window["statistics"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|s| s["feature"] == "amount")
        .map(|s| {
            format!(
                "{} {:.4}",
                s["statistic"].as_str().unwrap_or_default(),
                s["value"].as_f64().unwrap_or_default()
            )
        })
        .collect();
    let drifted = window["statistics"]
        .as_array()
        .is_some_and(|s| s.iter().any(|s| s["drifted"] == true));
    println!(
        "mlops demo:   last window ({} predictions): amount {} — {}",
        window["size"],
        stats.join(", "),
        if drifted { "drifted" } else { "no drift" }
    );
}
