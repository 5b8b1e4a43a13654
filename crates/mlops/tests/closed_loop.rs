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

use std::time::Duration;

use serde_json::Value;
use support::{
    Launched, Ports, admin_client,
    jaeger::Jaeger,
    mlops,
    traffic::{LIMIT, Names, Traffic, get, small_windows},
    wait_until_ready,
};

const NAMES: Names = Names {
    dataset: "loop_payments",
    view: "loop_spend",
    model: "loop_big_spender",
};
const DATASET: &str = NAMES.dataset;
const VIEW: &str = NAMES.view;
const MODEL: &str = NAMES.model;

/// `mlops up` in `dir` with the test's small windows (and what `configure` adds), its log
/// in `dir/launcher.log`; once every service is ready, with an admin's client.
async fn up(
    dir: &std::path::Path,
    ports: &Ports,
    configure: impl FnOnce(&mut std::process::Command),
) -> (Launched, reqwest::Client) {
    let log = std::fs::File::create(dir.join("launcher.log")).unwrap();
    let mut command = mlops(&["up"], &dir.join("data"), ports);
    configure(small_windows(&mut command));
    let launched = Launched(
        command
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlops up"),
    );
    wait_until_ready(ports).await;
    let http = admin_client(&dir.join("data"), Duration::from_secs(60));
    (launched, http)
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
    let (_launcher, http) = up(dir.path(), &ports, |up| {
        up.env(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://127.0.0.1:{}", jaeger.otlp_grpc),
        )
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("OTEL_BSP_SCHEDULE_DELAY", "500")
        .env("OTEL_BSP_MAX_QUEUE_SIZE", "200000")
        .env("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "4096");
    })
    .await;
    let mut stream = Traffic::new(http.clone(), &ports, NAMES, 42);
    stream.first_version().await;

    // Phase 1: traffic like the training data. No alarm.
    for _ in 0..30 {
        stream.step().await;
    }
    let report = mlops_testkit::until("the stationary windows are reported", LIMIT, async || {
        let report = stream.monitoring().await;
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
        let report = stream.monitoring().await;
        let rows = report["versions"][0]["feature_rows"].as_u64().unwrap_or(0);
        (rows > 0).then_some(()).ok_or(report.to_string())
    })
    .await;

    // Phase 2: payments grow (covariate shift; the labels stay right): drift, one
    // retraining, version 2 in canary, promoted, serving alone.
    let (drift, canary_seen, promoted) = stream.drift_to_promotion(2).await;
    assert_eq!(drift["model_version"], 1, "{drift}");
    // The window that opened the incident may straddle the change, where KS and PSI
    // cross their thresholds at slightly different shares of shifted payments: either
    // names the amount; the shifted windows that follow it are past both.
    assert!(
        drift["features"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["feature"] == "amount"),
        "{drift}"
    );
    let report = stream.monitoring().await;
    let version_1 = report["versions"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["version"] == 1))
        .cloned()
        .unwrap_or_default();
    let past_both = |window: &Value| {
        let drifted = |statistic: &str| {
            window["statistics"].as_array().is_some_and(|s| {
                s.iter().any(|s| {
                    s["feature"] == "amount" && s["statistic"] == statistic && s["drifted"] == true
                })
            })
        };
        drifted("psi") && drifted("ks")
    };
    assert!(
        version_1["windows"]
            .as_array()
            .is_some_and(|w| w.iter().any(past_both)),
        "a shifted window drifts by PSI and KS alike: {version_1}"
    );
    let detected_at = drift["detected_at"].as_i64().unwrap();
    println!(
        "closed loop: drift event -> canary serving {:.1} s; canary -> promotion {:.1} s",
        secs(canary_seen - detected_at),
        secs(promoted - canary_seen)
    );
    let drift_runs = stream.drift_runs().await;
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
    let decisions = stream.monitoring().await["canary_decisions"].clone();
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
    let decisions = stream.monitoring().await["canary_decisions"].clone();
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
    assert_eq!(stream.model().await["production"], 2, "{rolled_back}");
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
        let exported = support::metrics::exported(stream.base).await;
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

/// A shadow (a version in canary at 0 %) judged end to end: it scores every request beside
/// production without answering any, its answers reach the monitor over the prediction
/// log, the labels that name each request grade them, and the monitor decides on that
/// evidence alone. A shadow that learned the opposite of version 1 is rolled back; one
/// that answers as version 1 does is promoted — and no client ever got a shadow's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shadow_is_graded_on_labels_and_promoted_or_rolled_back() {
    const SHADOWED: Names = Names {
        dataset: "shadow_payments",
        view: "shadow_spend",
        model: "shadow_big_spender",
    };
    let model = SHADOWED.model;
    let dir = mlops_testkit::temp_dir();
    let ports = Ports::pick();
    let (_launcher, http) = up(dir.path(), &ports, |_| {}).await;
    let mut stream = Traffic::new(http.clone(), &ports, SHADOWED, 7);
    stream.first_version().await;
    // The artifact file: a signed header line, then the artifact's JSON.
    let file = http
        .get(ports.url(
            "registry",
            &format!("/v1/models/{model}/versions/1/artifact"),
        ))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("version 1's artifact")
        .bytes()
        .await
        .unwrap();
    let body = file
        .splitn(2, |b| *b == b'\n')
        .nth(1)
        .expect("a header line");
    let artifact: Value = serde_json::from_slice(body).expect("the artifact's JSON");
    let mut opposite = artifact.clone();
    assert!(
        negate_logistic_regression(&mut opposite["model"]),
        "a logistic regression in {artifact}"
    );

    // The shadow that learned the opposite: graded wrong on the labels, rolled back.
    let shadow = |artifact: &Value, reason: &str| {
        let body = serde_json::json!({"artifact": artifact, "canary_percent": 0.0,
                                      "actor": "test", "reason": reason});
        let url = ports.url("registry", &format!("/v1/models/{model}/versions"));
        let http = http.clone();
        async move { support::post(&http, &url, &body).await }
    };
    let registered = shadow(&opposite, "a shadow that learned the opposite").await;
    assert_eq!(registered["version"], 2, "{registered}");
    assert_eq!(registered["stage"], "canary", "{registered}");
    let decision = |version: i64| {
        async move |_: &reqwest::Client, s: &Traffic<'_>| {
            s.monitoring().await["canary_decisions"]
                .as_array()?
                .iter()
                .find(|d| d["canary_version"] == version)
                .cloned()
        }
    };
    let rollback = stream.until("the shadow is judged", decision(2)).await;
    assert_eq!(rollback["decision"], "rollback", "{rollback}");
    let evidence = &rollback["evidence"];
    assert!(
        evidence["canary_labels"].as_f64().unwrap() >= 20.0
            && evidence["canary_loss"].as_f64() > evidence["production_loss"].as_f64(),
        "graded on labels, worse than production: {rollback}"
    );
    assert_eq!(stream.model().await["production"], 1);

    // The shadow that answers as version 1 does: not worse, promoted.
    let registered = shadow(&artifact, "a shadow of the same model").await;
    assert_eq!(registered["version"], 3, "{registered}");
    let promote = stream
        .until("the second shadow is judged", decision(3))
        .await;
    assert_eq!(promote["decision"], "promote", "{promote}");
    assert!(
        promote["evidence"]["canary_labels"].as_f64().unwrap() >= 20.0,
        "{promote}"
    );
    // A shadow answers no client: every answer was production's — version 1's, and
    // version 3's once promoted — never the rolled-back shadow's.
    let mut answered = std::collections::BTreeMap::new();
    for answer in &stream.answers {
        *answered.entry(answer.clone()).or_insert(0) += 1;
    }
    assert!(
        answered
            .keys()
            .all(|(v, r)| r == "production" && (*v == 1 || *v == 3)),
        "answers by (version, role): {answered:?}"
    );
    stream
        .until("serving answers with version 3", async |_, s| {
            s.answers.last().is_some_and(|(v, _)| *v == 3).then_some(())
        })
        .await;
    assert_eq!(stream.model().await["production"], 3);
}

/// Negates a fitted logistic regression's weights and intercept (a model that learned the
/// opposite); whether one was found.
fn negate_logistic_regression(model: &mut Value) -> bool {
    match model {
        Value::Object(fields)
            if fields.contains_key("intercept") && fields.contains_key("params") =>
        {
            if let Some(intercept) = fields["intercept"].as_f64() {
                fields["intercept"] = (-intercept).into();
            }
            let weights = fields["params"]
                .get_mut("data")
                .and_then(Value::as_array_mut)
                .expect("the weights");
            for weight in weights {
                *weight = (-weight.as_f64().unwrap()).into();
            }
            true
        }
        Value::Object(fields) => fields.values_mut().any(negate_logistic_regression),
        Value::Array(items) => items.iter_mut().any(negate_logistic_regression),
        _ => false,
    }
}
