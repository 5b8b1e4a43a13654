//! The closed loop's traffic through the public APIs only: a seeded stream of payments to
//! ingestion, each scored by serving, with labels that arrive a step late naming the
//! request they grade; and version 1 of a model trained on a labelled history and serving.
//! The concept is fixed (a payment is a big one from [`BIG`] on), the payments' range is
//! what shifts.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use reqwest::Client;
use serde_json::{Value, json};

use super::{Ports, payments_dataset, post};

/// A payment is a big one from this amount on: the concept, the same in every phase.
pub(crate) const BIG: f64 = 30.0;
const CUSTOMERS: u64 = 300;
/// Everything in one scenario happens within this.
pub(crate) const LIMIT: Duration = Duration::from_secs(240);

/// Small monitoring windows and canary bakes, for a test-sized stream; retraining learns
/// from what came since the change (event times here are the wall clock, like predictions).
pub(crate) fn small_windows(command: &mut Command) -> &mut Command {
    command
        .env("MLOPS__MONITORING__POLICY__WINDOW_SIZE", "100")
        .env("MLOPS__MONITORING__POLICY__RETRAIN_LOOKBACK_MS", "0")
        .env("MLOPS__MONITORING__POLICY__CANARY__MIN_REQUESTS", "30")
        .env("MLOPS__MONITORING__POLICY__CANARY__MIN_LABELS", "20")
        .env("MLOPS__MONITORING__POLICY__CANARY__MIN_SECONDS", "3")
}

/// The dataset, view and model of one scenario.
#[derive(Clone, Copy)]
pub(crate) struct Names {
    pub(crate) dataset: &'static str,
    pub(crate) view: &'static str,
    pub(crate) model: &'static str,
}

/// The stream: deterministic amounts, uniform in the phase's range.
pub(crate) struct Traffic<'a> {
    pub(crate) http: Client,
    pub(crate) base: &'a Ports,
    pub(crate) names: Names,
    seed: u64,
    pub(crate) sent: u64,
    pub(crate) range: (f64, f64),
    /// Labels of the last step, posted with the next one (labels come late).
    late: Vec<Value>,
    /// Label the canary's answers wrong (a candidate worse in canary than in training).
    pub(crate) contradict_canary: bool,
    /// (version, role) of every answer.
    pub(crate) answers: Vec<(i64, String)>,
}

impl<'a> Traffic<'a> {
    pub(crate) fn new(http: Client, base: &'a Ports, names: Names, seed: u64) -> Self {
        Self {
            http,
            base,
            names,
            seed,
            sent: 0,
            range: (0.0, 60.0),
            late: Vec::new(),
            contradict_canary: false,
            answers: Vec::new(),
        }
    }

    pub(crate) fn url(&self, service: &str, path: &str) -> String {
        self.base.url(service, path)
    }

    fn amount(&mut self) -> f64 {
        // splitmix64: a fixed, well-spread sequence.
        self.seed = self.seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        let unit = (z ^ (z >> 31)) as f64 / u64::MAX as f64;
        self.range.0 + unit * (self.range.1 - self.range.0)
    }

    /// One step: ten payments ingested, each scored by serving, last step's labels posted.
    pub(crate) async fn step(&mut self) {
        let Names { dataset, model, .. } = self.names;
        let now = now_millis();
        let mut events = Vec::new();
        for _ in 0..10 {
            let n = self.sent;
            self.sent += 1;
            let amount = self.amount();
            events.push(
                json!({"txn_id": format!("t-{n}"), "customer_id": format!("c-{}", n % CUSTOMERS),
                               "amount": amount, "ts": now}),
            );
        }
        post(
            &self.http,
            &self.url("ingestion", &format!("/v1/datasets/{dataset}/events")),
            &Value::Array(events.clone()),
        )
        .await;
        let late = std::mem::take(&mut self.late);
        if !late.is_empty() {
            post(
                &self.http,
                &self.url("ingestion", &format!("/v1/datasets/{dataset}/labels")),
                &Value::Array(late),
            )
            .await;
        }
        for event in events {
            let amount = event["amount"].as_f64().unwrap();
            let id = event["txn_id"].as_str().unwrap();
            let customer = event["customer_id"].as_str().unwrap();
            let answer = post(
                &self.http,
                &self.url("serving", &format!("/v1/models/{model}:predict")),
                &json!({"features": {"amount": amount}, "entity_id": customer, "request_id": id}),
            )
            .await;
            let role = answer["role"].as_str().unwrap_or_default().to_owned();
            let predicted = answer["prediction"]["label"].as_i64() == Some(1);
            let truth = if self.contradict_canary && role == "canary" {
                !predicted
            } else {
                amount >= BIG
            };
            self.answers
                .push((answer["version"].as_i64().unwrap_or_default(), role));
            self.late.push(
                json!({"entity_id": customer, "label": truth, "event_time": now,
                                  "request_id": id, "label_id": format!("l-{id}")}),
            );
        }
    }

    /// Streams until `done` answers with something, checking it every few steps.
    pub(crate) async fn until<T>(
        &mut self,
        what: &str,
        mut done: impl AsyncFnMut(&Client, &Traffic<'a>) -> Option<T>,
    ) -> T {
        let started = Instant::now();
        loop {
            for _ in 0..3 {
                self.step().await;
            }
            if let Some(found) = done(&self.http, self).await {
                return found;
            }
            if started.elapsed() > LIMIT {
                let monitored = self.monitoring().await;
                // What the monitor counted per version: which of its inputs fell behind.
                let counted: Vec<Value> = monitored["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|v| {
                        json!({"version": v["version"], "stage": v["stage"],
                               "predictions": v["predictions"], "labels": v["labels"],
                               "feature_rows": v["feature_rows"]})
                    })
                    .collect();
                panic!(
                    "{what}: not within {LIMIT:?} ({} payments streamed)\nruns: {:#}\nmodel: {:#}\ndrift: {:#}\ncanary: {:#}\nmonitored versions: {:#}\ndecisions: {:#}",
                    self.sent,
                    Value::Array(self.runs().await),
                    self.model().await,
                    monitored["drift_events"],
                    monitored["canary"],
                    Value::Array(counted),
                    monitored["canary_decisions"]
                );
            }
        }
    }

    /// The runs of the model, newest first.
    pub(crate) async fn runs(&self) -> Vec<Value> {
        let model = self.names.model;
        get(
            &self.http,
            &self.url("training", &format!("/v1/training-runs?model={model}")),
        )
        .await
        .and_then(|b| b["runs"].as_array().cloned())
        .unwrap_or_default()
    }

    /// The runs a drift event asked for, newest first.
    pub(crate) async fn drift_runs(&self) -> Vec<Value> {
        self.runs()
            .await
            .into_iter()
            .filter(|r| {
                r["requests"]
                    .as_array()
                    .is_some_and(|q| q.iter().any(|q| q["reason"] == "drift"))
            })
            .collect()
    }

    /// The model as the registry tells it.
    pub(crate) async fn model(&self) -> Value {
        let model = self.names.model;
        get(
            &self.http,
            &self.url("registry", &format!("/v1/models/{model}")),
        )
        .await
        .unwrap_or(Value::Null)
    }

    /// The monitor's report on the model.
    pub(crate) async fn monitoring(&self) -> Value {
        let model = self.names.model;
        get(
            &self.http,
            &self.url("monitoring", &format!("/v1/monitoring/models/{model}")),
        )
        .await
        .unwrap_or(Value::Null)
    }

    /// Declares the dataset, a view of its amounts and a model spec on it, then trains
    /// version 1 on 400 labelled payments of the first phase and waits until serving
    /// answers with it.
    pub(crate) async fn first_version(&mut self) {
        let Names {
            dataset,
            view,
            model,
        } = self.names;
        let http = self.http.clone();
        post(
            &http,
            &self.url("ingestion", "/v1/datasets"),
            &payments_dataset(dataset, dataset),
        )
        .await;
        post(
            &http,
            &self.url("feature", "/v1/feature-views"),
            &json!({"name": view, "source": dataset, "entity_key": "customer_id",
                    "event_time": "ts", "features": [{"name": "amount"}]}),
        )
        .await;
        post(
            &http,
            &self.url("training", "/v1/models/specs"),
            &json!({"name": model, "view": view, "task": "binary_classification",
                    "primary_metric": "accuracy",
                    "algorithms": {"logistic_regression": {"alpha": [0.01, 1.0]}},
                    "gate": {"min": 0.8, "max_loss": 0.05}}),
        )
        .await;
        let started = now_millis() - 1;
        let mut history = Vec::new();
        for step in 0..40 {
            let mut events = Vec::new();
            let mut labels = Vec::new();
            for _ in 0..10 {
                let n = self.sent;
                self.sent += 1;
                let amount = self.amount();
                let id = format!("t-{n}");
                let customer = format!("c-{}", n % CUSTOMERS);
                let ts = started - 400_000 + step * 10_000;
                events.push(
                    json!({"txn_id": id, "customer_id": customer, "amount": amount, "ts": ts}),
                );
                labels.push(json!({"entity_id": customer, "label": amount >= BIG,
                                   "event_time": ts, "label_id": format!("l-{id}")}));
            }
            history.push((events, labels));
        }
        for (events, labels) in &history {
            let url = self.url("ingestion", &format!("/v1/datasets/{dataset}/events"));
            post(&http, &url, &Value::Array(events.clone())).await;
            let url = self.url("ingestion", &format!("/v1/datasets/{dataset}/labels"));
            post(&http, &url, &Value::Array(labels.clone())).await;
        }
        let rows_url = self.url("feature", "/v1/training-sets");
        mlops_testkit::until("the history reaches the training set", LIMIT, async || {
            let set = http
                .post(&rows_url)
                .json(&json!({"view": view}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: Value = set.json().await.map_err(|e| e.to_string())?;
            (body["rows"] == 400).then_some(()).ok_or(body.to_string())
        })
        .await;
        let run = post(
            &http,
            &self.url("training", "/v1/training-runs"),
            &json!({"model": model}),
        )
        .await;
        let run_url = self.url(
            "training",
            &format!("/v1/training-runs/{}", run["id"].as_str().unwrap()),
        );
        let run = mlops_testkit::until("version 1 is trained", LIMIT, async || {
            let run = get(&http, &run_url).await.ok_or("no answer".to_owned())?;
            match run["status"].as_str() {
                Some("pending" | "running") | None => Err(run.to_string()),
                Some(_) => Ok(run),
            }
        })
        .await;
        assert_eq!(run["status"], "succeeded", "{run}");
        let predict_url = self.url("serving", &format!("/v1/models/{model}:predict"));
        mlops_testkit::until("serving answers with version 1", LIMIT, async || {
            let answer = http
                .post(&predict_url)
                .json(&json!({"features": {"amount": 10.0}}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let body: Value = answer.json().await.map_err(|e| e.to_string())?;
            (body["version"] == 1).then_some(()).ok_or(body.to_string())
        })
        .await;
    }

    /// Shifts the payments up (covariate shift; the labels stay right) and streams until
    /// the monitor has raised a drift event, a retraining has entered canary and been
    /// promoted, and serving answers with the new version alone. Returns the drift event,
    /// and when (ms) the new version first answered in canary and was promoted.
    pub(crate) async fn drift_to_promotion(&mut self, version: i64) -> (Value, i64, i64) {
        self.range = (self.range.0 + 20.0, self.range.1 + 40.0);
        let drift = self
            .until("drift is detected", async |_, s| {
                s.monitoring().await["drift_events"]
                    .as_array()
                    .and_then(|e| e.iter().rev().find(|e| e["model_version"] == version - 1))
                    .cloned()
            })
            .await;
        let canary_seen = self
            .until(
                &format!("version {version} serves in canary"),
                async |_, s| {
                    s.answers
                        .iter()
                        .any(|(v, r)| *v == version && r == "canary")
                        .then(now_millis)
                },
            )
            .await;
        let promoted = self
            .until(&format!("version {version} is promoted"), async |_, s| {
                (s.model().await["production"] == version).then(now_millis)
            })
            .await;
        // Serving hears of the promotion over `models.lifecycle`, a moment after the
        // registry: then every answer is the new version's.
        self.answers.clear();
        self.until(
            &format!("serving answers with version {version} alone"),
            async |_, s| {
                let last = &s.answers[s.answers.len().saturating_sub(10)..];
                last.iter()
                    .all(|(v, r)| *v == version && r == "production")
                    .then_some(())
            },
        )
        .await;
        (drift, canary_seen, promoted)
    }
}

pub(crate) fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// The body of a successful GET, or nothing.
pub(crate) async fn get(http: &Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}
