//! The closed loop, proved on the real binaries: `mlops up` runs the embedded broker and
//! the six services as separate processes, and a seeded synthetic stream goes in through
//! the public APIs only — events to ingestion, predictions from serving, delayed labels
//! naming the request they grade. Version 1 is trained and goes to production; the
//! stream's distribution shifts; the monitor detects it, exactly one retraining runs,
//! version 2 passes its gate, enters canary, wins and is promoted, and serving answers with
//! it. Then the stream shifts again, version 3 is trained and enters canary, and its
//! answers prove wrong (the labels contradict them): the platform rolls it back by itself
//! and version 2 keeps serving. The test prints how long each hop took.

// Tests drive the platform from outside, as a user would: plain tasks and clients.
#![allow(clippy::disallowed_methods)]

mod support;

use std::time::{Duration, Instant};

use reqwest::Client;
use serde_json::{Value, json};
use support::{
    Launched, Ports, admin_client, jaeger::Jaeger, mlops, payments_dataset, post, wait_until_ready,
};

const DATASET: &str = "loop_payments";
const VIEW: &str = "loop_spend";
const MODEL: &str = "loop_big_spender";
/// A payment is a big one from this amount on: the concept, the same in every phase.
const BIG: f64 = 30.0;
const CUSTOMERS: u64 = 300;
/// Everything in one scenario happens within this.
const LIMIT: Duration = Duration::from_secs(240);

/// The stream: deterministic amounts, uniform in the phase's range.
struct Stream {
    http: Client,
    base: Ports,
    seed: u64,
    sent: u64,
    range: (f64, f64),
    /// Labels of the last step, posted with the next one (labels come late).
    late: Vec<Value>,
    /// Label the canary's answers wrong (a candidate worse in canary than in training).
    contradict_canary: bool,
    /// (version, role) of every answer.
    answers: Vec<(i64, String)>,
}

impl Stream {
    fn url(&self, service: &str, path: &str) -> String {
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
    async fn step(&mut self) {
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
            &self.url("ingestion", &format!("/v1/datasets/{DATASET}/events")),
            &Value::Array(events.clone()),
        )
        .await;
        let late = std::mem::take(&mut self.late);
        if !late.is_empty() {
            post(
                &self.http,
                &self.url("ingestion", &format!("/v1/datasets/{DATASET}/labels")),
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
                &self.url("serving", &format!("/v1/models/{MODEL}:predict")),
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
    async fn until<T>(
        &mut self,
        what: &str,
        mut done: impl AsyncFnMut(&Client, &Stream) -> Option<T>,
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
                let monitored = monitoring(self).await;
                panic!(
                    "{what}: not within {LIMIT:?} ({} payments streamed)\nruns: {:#}\nmodel: {:#}\ndrift: {:#}\ndecisions: {:#}",
                    self.sent,
                    Value::Array(runs(self).await),
                    model(self).await,
                    monitored["drift_events"],
                    monitored["canary_decisions"]
                );
            }
        }
    }
}

fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

async fn get(http: &Client, url: &str) -> Option<Value> {
    let response = http.get(url).send().await.ok()?;
    if !response.status().is_success() {
        return None;
    }
    response.json().await.ok()
}

/// The runs of the model, newest first.
async fn runs(stream: &Stream) -> Vec<Value> {
    get(
        &stream.http,
        &stream.url("training", &format!("/v1/training-runs?model={MODEL}")),
    )
    .await
    .and_then(|b| b["runs"].as_array().cloned())
    .unwrap_or_default()
}

async fn model(stream: &Stream) -> Value {
    get(
        &stream.http,
        &stream.url("registry", &format!("/v1/models/{MODEL}")),
    )
    .await
    .unwrap_or(Value::Null)
}

async fn monitoring(stream: &Stream) -> Value {
    get(
        &stream.http,
        &stream.url("monitoring", &format!("/v1/monitoring/models/{MODEL}")),
    )
    .await
    .unwrap_or(Value::Null)
}

/// Milliseconds as seconds, for the timeline.
fn secs(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drift_retrains_canaries_and_promotes_and_a_worse_canary_is_rolled_back() {
    let dir = mlops_testkit::temp_dir();
    let ports = Ports::pick();
    // Every service exports its spans to a real Jaeger (OTLP over gRPC), read back at the
    // end through Jaeger's query API.
    let jaeger = Jaeger::start(dir.path()).await;
    let log = std::fs::File::create(dir.path().join("launcher.log")).unwrap();
    let _launcher = Launched(
        mlops(&["up"], &dir.path().join("data"), &ports)
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
            )
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .env("OTEL_BSP_SCHEDULE_DELAY", "500")
            .env("OTEL_BSP_MAX_QUEUE_SIZE", "200000")
            .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096")
            // Small windows and bakes for a test-sized stream; retraining learns from what
            // came since the change (event times here are the wall clock, like predictions).
            .env("MLOPS__MONITORING__POLICY__WINDOW_SIZE", "100")
            .env("MLOPS__MONITORING__POLICY__RETRAIN_LOOKBACK_MS", "0")
            .env("MLOPS__MONITORING__POLICY__CANARY__MIN_REQUESTS", "30")
            .env("MLOPS__MONITORING__POLICY__CANARY__MIN_LABELS", "20")
            .env("MLOPS__MONITORING__POLICY__CANARY__MIN_SECONDS", "3")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlops up"),
    );
    wait_until_ready(&ports).await;
    let http = admin_client(&dir.path().join("data"), Duration::from_secs(60));
    let mut stream = Stream {
        http: http.clone(),
        base: ports,
        seed: 42,
        sent: 0,
        range: (0.0, 60.0),
        late: Vec::new(),
        contradict_canary: false,
        answers: Vec::new(),
    };

    // Declarations, and version 1 trained on 400 labelled payments of the first phase.
    post(
        &http,
        &stream.url("ingestion", "/v1/datasets"),
        &payments_dataset(DATASET, "loop"),
    )
    .await;
    post(
        &http,
        &stream.url("feature", "/v1/feature-views"),
        &json!({"name": VIEW, "source": DATASET, "entity_key": "customer_id",
                "event_time": "ts", "features": [{"name": "amount"}]}),
    )
    .await;
    post(
        &http,
        &stream.url("training", "/v1/models/specs"),
        &json!({"name": MODEL, "view": VIEW, "task": "binary_classification",
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
            let n = stream.sent;
            stream.sent += 1;
            let amount = stream.amount();
            let id = format!("t-{n}");
            let customer = format!("c-{}", n % CUSTOMERS);
            let ts = started - 400_000 + step * 10_000;
            events.push(json!({"txn_id": id, "customer_id": customer, "amount": amount, "ts": ts}));
            labels.push(json!({"entity_id": customer, "label": amount >= BIG,
                               "event_time": ts, "label_id": format!("l-{id}")}));
        }
        history.push((events, labels));
    }
    for (events, labels) in &history {
        let url = stream.url("ingestion", &format!("/v1/datasets/{DATASET}/events"));
        post(&http, &url, &Value::Array(events.clone())).await;
        let url = stream.url("ingestion", &format!("/v1/datasets/{DATASET}/labels"));
        post(&http, &url, &Value::Array(labels.clone())).await;
    }
    let rows_url = stream.url("feature", "/v1/training-sets");
    mlops_testkit::until("the history reaches the training set", LIMIT, async || {
        let set = http
            .post(&rows_url)
            .json(&json!({"view": VIEW}))
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = set.json().await.map_err(|e| e.to_string())?;
        (body["rows"] == 400).then_some(()).ok_or(body.to_string())
    })
    .await;
    let run = post(
        &http,
        &stream.url("training", "/v1/training-runs"),
        &json!({"model": MODEL}),
    )
    .await;
    let run_url = stream.url(
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
    let predict_url = stream.url("serving", &format!("/v1/models/{MODEL}:predict"));
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

    // Phase 1: traffic like the training data. No alarm.
    for _ in 0..30 {
        stream.step().await;
    }
    let report = mlops_testkit::until("the stationary windows are reported", LIMIT, async || {
        let report = monitoring(&stream).await;
        let windows = report["versions"][0]["windows"]
            .as_array()
            .map_or(0, Vec::len);
        (windows >= 2)
            .then_some(report.clone())
            .ok_or(report.to_string())
    })
    .await;
    assert_eq!(
        report["drift_events"].as_array().map(Vec::len),
        Some(0),
        "no false alarm on a stationary stream: {report}"
    );
    // The view's rows are watched as well, scored or not.
    mlops_testkit::until("feature rows reach the monitor", LIMIT, async || {
        let report = monitoring(&stream).await;
        let rows = report["versions"][0]["feature_rows"].as_u64().unwrap_or(0);
        (rows > 0).then_some(()).ok_or(report.to_string())
    })
    .await;

    // Phase 2: payments grow (covariate shift; the labels stay right).
    stream.range = (20.0, 100.0);
    let drift = stream
        .until("drift is detected", async |_, s| {
            monitoring(s).await["drift_events"]
                .as_array()
                .and_then(|e| e.first().cloned())
        })
        .await;
    assert_eq!(drift["model_version"], 1, "{drift}");
    assert!(
        drift["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["feature"] == "amount"
                && f["statistic"] == "psi"
                && f["value"].as_f64().unwrap() > 0.2),
        "{drift}"
    );
    let detected_at = drift["detected_at"].as_i64().unwrap();
    let canary_seen = stream
        .until("version 2 serves in canary", async |_, s| {
            s.answers
                .iter()
                .any(|(v, r)| *v == 2 && r == "canary")
                .then(now_millis)
        })
        .await;
    let promoted = stream
        .until("version 2 is promoted", async |_, s| {
            let model = model(s).await;
            (model["production"] == 2).then(now_millis)
        })
        .await;
    println!(
        "closed loop: drift event -> canary serving {:.1} s; canary -> promotion {:.1} s",
        secs(canary_seen - detected_at),
        secs(promoted - canary_seen)
    );
    let drift_runs: Vec<Value> = runs(&stream)
        .await
        .into_iter()
        .filter(|r| {
            r["requests"]
                .as_array()
                .is_some_and(|q| q.iter().any(|q| q["reason"] == "drift"))
        })
        .collect();
    assert_eq!(
        drift_runs.len(),
        1,
        "exactly one retraining: {drift_runs:?}"
    );
    assert_eq!(
        drift_runs[0]["requests"][0]["triggering_event_id"], drift["event_id"],
        "the retraining names the drift event"
    );
    assert_eq!(drift_runs[0]["registered_version"], 2);
    // The training computation is the search; the rest of the hop is the platform's.
    let search = drift_runs[0]["timings_ms"]["search"]
        .as_i64()
        .unwrap_or_default();
    println!(
        "closed loop: of which the training search {:.1} s, platform overhead {:.1} s",
        secs(search),
        secs(canary_seen - detected_at - search)
    );
    let decisions = monitoring(&stream).await["canary_decisions"].clone();
    assert_eq!(decisions[0]["decision"], "promote", "{decisions}");
    assert_eq!(decisions[0]["canary_version"], 2, "{decisions}");
    // One remediation flow, one trace id: the drift event opens it, the run and the
    // verdict on its candidate carry it.
    let flow = drift["trace_id"].as_str().unwrap_or_default().to_owned();
    assert!(
        flow.len() == 32 && flow.bytes().all(|b| b.is_ascii_hexdigit()),
        "the drift event names its trace: {drift}"
    );
    assert_eq!(
        drift_runs[0]["trace_id"],
        flow.as_str(),
        "the run continues it"
    );
    assert_eq!(
        decisions[0]["trace_id"],
        flow.as_str(),
        "the verdict continues it"
    );
    remediation_is_one_trace_in_jaeger(&jaeger, &flow).await;
    // The same trace in the terminal, as `mlops traces <id>` shows it.
    let shown = std::process::Command::new(env!("CARGO_BIN_EXE_mlops"))
        .args(["traces", &flow, "--jaeger"])
        .arg(format!("http://127.0.0.1:{}", jaeger.ui))
        .output()
        .expect("mlops traces");
    let tree = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.status.success(), "{tree}");
    assert!(
        tree.lines()
            .nth(1)
            .is_some_and(|l| l.starts_with("monitoring  drift detected")),
        "the root first: {tree}"
    );
    assert!(
        tree.lines()
            .any(|l| l.trim_start().starts_with("serving     swap")),
        "{tree}"
    );
    event_paths_are_traces_in_jaeger(&jaeger).await;
    stream.answers.clear();
    for _ in 0..3 {
        stream.step().await;
    }
    assert!(
        stream
            .answers
            .iter()
            .all(|(v, r)| *v == 2 && r == "production"),
        "serving answers with version 2: {:?}",
        stream.answers
    );

    // Phase 3: the stream moves again; version 3 is trained on it, but in canary its
    // answers prove wrong. The monitor rolls it back; version 2 keeps serving.
    stream.range = (0.0, 60.0);
    stream.contradict_canary = true;
    stream
        .until("version 3 serves in canary", async |_, s| {
            s.answers
                .iter()
                .any(|(v, r)| *v == 3 && r == "canary")
                .then_some(())
        })
        .await;
    let rolled_back = stream
        .until("version 3 is rolled back", async |_, s| {
            let versions = get(
                &s.http,
                &s.url("registry", &format!("/v1/models/{MODEL}/versions/3")),
            )
            .await?;
            (versions["stage"] == "archived").then_some(versions)
        })
        .await;
    let decisions = monitoring(&stream).await["canary_decisions"].clone();
    let rollback = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["canary_version"] == 3)
        .cloned()
        .unwrap_or_default();
    assert_eq!(rollback["decision"], "rollback", "{decisions}");
    assert!(
        rollback["evidence"]["loss_p_value"].as_f64().unwrap() < 0.05,
        "{rollback}"
    );
    assert_eq!(model(&stream).await["production"], 2, "{rolled_back}");
    stream.answers.clear();
    for _ in 0..3 {
        stream.step().await;
    }
    assert!(
        stream.answers.iter().all(|(v, _)| *v == 2),
        "version 2 serves alone again: {:?}",
        stream.answers
    );

    // Every family an alert rule or a dashboard panel names is exported, now that the loop
    // has run through drift, training, canary, promotion and rollback (and one record that
    // is not Avro has been dead-lettered).
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", stream.base.bootstrap())
        .create()
        .unwrap();
    producer
        .send(
            rdkafka::producer::FutureRecord::<str, [u8]>::to(&format!("raw.{DATASET}"))
                .key("c-0")
                .payload(b"not avro"),
            Duration::from_secs(30),
        )
        .await
        .expect("produce a poison record");
    let exported = mlops_testkit::until("the dead letter is counted", LIMIT, async || {
        let exported = support::metrics::exported(&stream.base).await;
        exported
            .contains("mlops_consumer_dead_letters")
            .then_some(exported)
            .ok_or_else(|| "not yet".to_owned())
    })
    .await;
    support::metrics::assert_only_exported_names(&exported);
}

/// The drift remediation as an SRE finds it in Jaeger: one trace from the drift event to
/// the promotion, every span parented within it, spanning monitoring, training, registry
/// and serving in the order the loop runs.
async fn remediation_is_one_trace_in_jaeger(jaeger: &Jaeger, flow: &str) {
    let trace = mlops_testkit::until("the remediation trace reaches Jaeger", LIMIT, async || {
        let trace = jaeger.trace(flow).await.ok_or("not found".to_owned())?;
        // The promotion is the last hop: serving swapping to version 2 in production.
        let promoted = trace
            .named("swap")
            .any(|s| s.tags.get("stage").and_then(Value::as_str) == Some("Production"));
        // Each service exports on its own schedule: wait until every parent has arrived.
        let roots: Vec<String> = trace
            .roots()
            .iter()
            .map(|s| format!("{}:{}", s.service, s.name))
            .collect();
        (promoted && roots.len() == 1)
            .then_some(trace.clone())
            .ok_or_else(|| {
                format!(
                    "{} spans, promoted: {promoted}, roots: {roots:?}",
                    trace.spans.len()
                )
            })
    })
    .await;
    let roots = trace.roots();
    assert_eq!(
        roots.iter().map(|s| s.name.as_str()).collect::<Vec<_>>(),
        ["drift detected"],
        "one root, the drift detection; every other span parented in the trace"
    );
    assert_eq!(roots[0].service, "monitoring");
    assert!(
        !roots[0].links.is_empty(),
        "the drift detection links to predictions of its window"
    );
    let services = trace.services();
    for service in ["monitoring", "training", "registry", "serving"] {
        assert!(services.contains(service), "{service} in {services:?}");
    }
    // Each hop under the one before it, across processes and Kafka topics.
    let chain = |name: &str, service: &str| -> Vec<String> {
        let span = trace
            .spans
            .iter()
            .find(|s| s.name == name && s.service == service)
            .unwrap_or_else(|| {
                let names: Vec<_> = trace.spans.iter().map(|s| (&s.service, &s.name)).collect();
                panic!("no {service}:{name} in the remediation trace: {names:?}")
            });
        trace.ancestry(span)
    };
    let has = |chain: &[String], hop: &str| chain.iter().any(|h| h == hop);
    let trial = chain("trial", "training");
    for hop in [
        "training:training run",
        "training:process training.requests",
        "monitoring:send training.requests",
        "monitoring:drift detected",
    ] {
        assert!(has(&trial, hop), "{hop} in {trial:?}");
    }
    let registered = chain("POST /v1/models/{name}/versions", "registry");
    assert!(has(&registered, "training:training run"), "{registered:?}");
    let swaps: Vec<Vec<String>> = trace
        .named("swap")
        .filter(|s| s.service == "serving")
        .map(|s| trace.ancestry(s))
        .collect();
    let canary = swaps
        .iter()
        .find(|c| has(c, "registry:POST /v1/models/{name}/versions"))
        .unwrap_or_else(|| panic!("serving's canary swap under the registration: {swaps:?}"));
    assert!(has(canary, "registry:lifecycle event"), "{canary:?}");
    let promotion = swaps
        .iter()
        .find(|c| has(c, "monitoring:canary verdict"))
        .unwrap_or_else(|| panic!("serving's promotion swap under the verdict: {swaps:?}"));
    for hop in [
        "registry:lifecycle event",
        "registry:process monitoring.canary-decisions",
        "monitoring:send monitoring.canary-decisions",
        "monitoring:process models.lifecycle",
        "registry:POST /v1/models/{name}/versions",
        "monitoring:drift detected",
    ] {
        assert!(has(promotion, hop), "{hop} in {promotion:?}");
    }
    let trials = trace.named("trial").count();
    assert!(trials >= 2, "every trial of the search is a span: {trials}");
    println!(
        "closed loop: the remediation is one trace of {} spans in Jaeger; the promotion's path: {}",
        trace.spans.len(),
        promotion
            .iter()
            .rev()
            .cloned()
            .collect::<Vec<_>>()
            .join(" -> ")
    );
}

/// An ingested event's trace runs from ingestion through the feature service (its raw
/// record checked, its feature row published) to the monitor reading that row; a scored
/// request's trace runs from serving to the monitor reading its prediction.
async fn event_paths_are_traces_in_jaeger(jaeger: &Jaeger) {
    let operation = "POST /v1/datasets/{name}/events";
    let row_topic = format!("features.{VIEW}");
    let event = mlops_testkit::until("an event's path is one trace", LIMIT, async || {
        let traces = jaeger.search("ingestion", operation, 50).await;
        // Each service exports on its own schedule: a trace counts once the monitor's span
        // and all its ancestors up to the ingestion request are in.
        let root = format!("ingestion:{operation}");
        traces
            .iter()
            .find(|t| {
                t.spans.iter().any(|s| {
                    s.service == "monitoring"
                        && s.name == format!("process {row_topic}")
                        && t.ancestry(s).last() == Some(&root)
                })
            })
            .cloned()
            .ok_or_else(|| format!("{} traces, none whole to the monitor yet", traces.len()))
    })
    .await;
    let row = event
        .spans
        .iter()
        .find(|s| s.service == "monitoring" && s.name == format!("process {row_topic}"))
        .unwrap();
    let path = event.ancestry(row);
    for hop in [
        format!("feature:send {row_topic}"),
        format!("ingestion:send raw.{DATASET}"),
        format!("ingestion:{operation}"),
    ] {
        assert!(path.contains(&hop), "{hop} in {path:?}");
    }
    let raw_send = format!("send raw.{DATASET}");
    let send = event.named(&raw_send).next().unwrap();
    assert_eq!(
        send.tags.get("messaging.system").and_then(Value::as_str),
        Some("kafka")
    );
    assert_eq!(
        send.tags.get("span.kind").and_then(Value::as_str),
        Some("producer")
    );
    assert!(
        event
            .spans
            .iter()
            .any(|s| s.service == "feature" && s.name == format!("process raw.{DATASET}")),
        "the feature service's intake of the raw record"
    );

    // The verb (`:predict`) is read by the `{name}` route.
    let operation = "POST /v1/models/{name}";
    let scored = mlops_testkit::until("a prediction's path is one trace", LIMIT, async || {
        let traces = jaeger.search("serving", operation, 50).await;
        let root = format!("serving:{operation}");
        traces
            .iter()
            .find(|t| {
                t.spans
                    .iter()
                    .any(|s| s.service == "monitoring" && t.ancestry(s).last() == Some(&root))
            })
            .cloned()
            .ok_or_else(|| format!("{} traces, none whole to the monitor yet", traces.len()))
    })
    .await;
    let logged = scored
        .spans
        .iter()
        .find(|s| s.service == "monitoring")
        .unwrap();
    let path = scored.ancestry(logged);
    assert_eq!(
        path.last().map(String::as_str),
        Some(format!("serving:{operation}").as_str()),
        "{path:?}"
    );
    println!("closed loop: an event's path in Jaeger: {}", {
        let mut path = event.ancestry(row);
        path.reverse();
        path.join(" -> ")
    });
}
