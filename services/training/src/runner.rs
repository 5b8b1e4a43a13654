//! Runs training requests: each is recorded with its model's pending or running run (so
//! a burst coalesces into one), a pending run starts once its cooldown has passed, on a
//! bounded number of slots, and its work — snapshot, search, gate against production,
//! registration — happens off the consumer and off the HTTP handlers, with the CPU-heavy
//! part on the blocking pool. An attempt stopped by a peer that is not ready (see
//! [`Stop`]) puts the run back to wait, with backoff. Each finished run's
//! `TrainingRunResult` goes to `training.runs`, retried until the broker takes it.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use mlops_events::{TrainingRequest, TrainingRunResult, TrainingRunStatus, now_millis, topics};
use mlops_kafka::{KafkaConfig, OwnedHeaders, Producer, TopicSpec};
use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};
use serde_json::{Value as Json, json};
use tokio::{
    sync::{Notify, OwnedSemaphorePermit, Semaphore},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::{
    run::{GateReport, train},
    store::{MAX_TRANSIENT_ATTEMPTS, RequestRow, RunRow, StoreError, TrainingStore},
};

/// Why an attempt at a run stopped: for good (the run fails), or for now — a peer
/// restarting or still catching up — after which the run waits and is tried again, its
/// requests kept, up to [`MAX_TRANSIENT_ATTEMPTS`] starts.
#[derive(Debug)]
pub enum Stop {
    Failed(String),
    Transient(String),
}

impl From<String> for Stop {
    fn from(reason: String) -> Self {
        Self::Failed(reason)
    }
}

/// How long a run waits before its next start after `attempts` starts that stopped on a
/// transient failure: 2 s, doubling, at most 30 s — a minute in all for the first five.
fn backoff_ms(attempts: i64) -> i64 {
    (2_000i64 << (attempts - 1).clamp(0, 10)).min(30_000)
}

/// The code that trains, baked in at build time (see `build.rs`).
pub const CODE_VERSION: &str = env!("MLOPS_CODE_VERSION");

pub struct Runner {
    pub store: TrainingStore,
    pub http: reqwest::Client,
    pub feature_url: String,
    pub registry: mlops_ml::registry::RegistryClient,
    pub producer: Producer,
    pub kafka: KafkaConfig,
    pub wake: Notify,
    pub slots: Arc<Semaphore>,
    /// A run starts no sooner than this after its first request, nor after the model's
    /// previous run finished: the window in which a burst of requests coalesces.
    pub cooldown_ms: i64,
    /// Residency region of this service: snapshots of another region are refused.
    pub region: Option<String>,
    pub metrics: RunMetrics,
}

/// Runs finished, by model and status (`succeeded`, `rejected_by_gate` — the gate's
/// refusals — and `failed`), and how long they took.
#[derive(Clone)]
pub struct RunMetrics {
    runs: Family<Vec<(&'static str, String)>, Counter>,
    seconds: Family<Vec<(&'static str, String)>, Histogram>,
    retries: Family<Vec<(&'static str, String)>, Counter>,
}

impl RunMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            runs: Family::default(),
            retries: Family::default(),
            seconds: Family::new_with_constructor(|| {
                Histogram::new([0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0])
            }),
        };
        registry.register(
            "mlops_training_runs",
            "Training runs finished, by model and status (succeeded, rejected_by_gate, failed)",
            metrics.runs.clone(),
        );
        registry.register(
            "mlops_training_run_seconds",
            "Duration of training runs from start to finish, by model and status",
            metrics.seconds.clone(),
        );
        registry.register(
            "mlops_training_run_retries",
            "Attempts at training runs that stopped on a transient failure (a peer restarting \
             or catching up) and were put back to wait, by model",
            metrics.retries.clone(),
        );
        metrics
    }

    fn retried(&self, model: &str) {
        self.retries
            .get_or_create(&vec![("model", model.to_owned())])
            .inc();
    }

    fn finished(&self, model: &str, status: &str, seconds: f64) {
        let labels = vec![("model", model.to_owned()), ("status", status.to_owned())];
        self.runs.get_or_create(&labels).inc();
        self.seconds.get_or_create(&labels).observe(seconds);
    }
}

impl Runner {
    /// Records `request` with its model's run; returns the run id.
    pub async fn request(&self, request: &TrainingRequest) -> Result<String, StoreError> {
        let now = now_millis();
        let last = self
            .store
            .last_finished(&request.model_name)
            .await?
            .unwrap_or(i64::MIN / 2);
        let not_before = (now + self.cooldown_ms).max(last + self.cooldown_ms);
        let run = self.store.attach(request, not_before).await?;
        self.wake.notify_one();
        Ok(run)
    }

    /// Schedules runs until `cancel` fires. Runs interrupted by a restart are resumed
    /// first (or failed after too many starts).
    pub async fn schedule(self: Arc<Self>, cancel: CancellationToken) -> Result<(), StoreError> {
        let (resumed, failed) = self.store.recover(now_millis()).await?;
        if !resumed.is_empty() || !failed.is_empty() {
            warn!(?resumed, ?failed, "runs interrupted by a restart");
        }
        let mut running = JoinSet::new();
        let mut topic_ready = false;
        loop {
            while running.try_join_next().is_some() {}
            // A broker that does not answer must not hold the shutdown.
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                published = self.publish_results(&mut topic_ready) => {
                    if let Err(e) = published {
                        warn!(error = %e, "training results not published yet");
                    }
                }
            }
            let now = now_millis();
            for run in self.store.due(now).await? {
                let Ok(permit) = self.slots.clone().try_acquire_owned() else {
                    break;
                };
                if self.store.start(&run.id, now).await? {
                    // The run's span continues the flow of the request that opened it.
                    let span = mlops_telemetry::continue_flow(
                        info_span!("training run", run = %run.id, model = %run.model),
                        run.traceparent.as_deref(),
                        run.trace_id.as_deref(),
                    );
                    running.spawn(self.clone().execute(run, permit).instrument(span));
                }
            }
            let wait = match self.store.next_due().await? {
                Some(at) if at > now => Duration::from_millis((at - now) as u64),
                Some(_) => Duration::from_millis(200),
                None => Duration::from_secs(5),
            }
            .min(Duration::from_secs(5));
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = self.wake.notified() => {}
                Some(_) = running.join_next() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    async fn execute(self: Arc<Self>, run: RunRow, _slot: OwnedSemaphorePermit) {
        let started = now_millis();
        let attempts = run.attempts + 1;
        let (status, record) = match self.attempt(&run, started).await {
            Ok(done) => done,
            Err(Stop::Transient(reason)) if attempts < MAX_TRANSIENT_ATTEMPTS => {
                let at = now_millis() + backoff_ms(attempts);
                warn!(run = %run.id, model = %run.model, %reason, attempts, retry_at = at,
                    "training run stopped short; it will be tried again");
                if let Err(e) = self.store.retry_later(&run.id, &reason, at).await {
                    // Left running, the run is resumed by the next start of the service.
                    warn!(run = %run.id, error = %e, "run not put back to pending");
                }
                self.metrics.retried(&run.model);
                self.wake.notify_one();
                return;
            }
            Err(Stop::Transient(reason)) => {
                let reason = format!("{reason} (after {attempts} attempts)");
                warn!(run = %run.id, model = %run.model, %reason, "training run failed");
                ("failed", json!({"reason": reason}))
            }
            Err(Stop::Failed(reason)) => {
                warn!(run = %run.id, model = %run.model, %reason, "training run failed");
                ("failed", json!({"reason": reason}))
            }
        };
        let finished = now_millis();
        let requests = self.store.requests(&run.id).await.unwrap_or_default();
        let mut full = json!({
            "id": run.id,
            "model": run.model,
            "status": status,
            "code_version": CODE_VERSION,
            "attempts": attempts,
            // Why the attempt before this one stopped short, when there was one.
            "last_error": run.last_error,
            "requests": requests.iter().map(request_json).collect::<Vec<_>>(),
            "request_ids": requests.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>(),
            "trace_id": run.trace_id,
            "created_at": run.created_at,
            "started_at": started,
            "finished_at": finished,
        });
        if let (Some(full), Json::Object(parts)) = (full.as_object_mut(), record) {
            for (key, value) in parts {
                full.entry(key).or_insert(value);
            }
        }
        full["timings_ms"]["total"] = json!(finished - started);
        if let Err(e) = self.store.finish(&run.id, status, &full, finished).await {
            warn!(run = %run.id, error = %e, "run record not saved; it will run again");
            return;
        }
        self.metrics
            .finished(&run.model, status, (finished - started) as f64 / 1000.0);
        info!(run = %run.id, model = %run.model, status, "training run finished");
        self.wake.notify_one();
    }

    /// The run's work; `(status, record parts)` or why it failed.
    async fn attempt(&self, run: &RunRow, started: i64) -> Result<(&'static str, Json), Stop> {
        let spec = self
            .store
            .specs()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .find(|s| s.name == run.model)
            .ok_or_else(|| format!("no model spec named {:?}", run.model))?;
        let requests = self
            .store
            .requests(&run.id)
            .await
            .map_err(|e| e.to_string())?;
        let window = window_of(&requests);
        let t0 = now_millis();
        let (manifest, frame) = crate::snapshot::fetch(
            &self.http,
            &self.feature_url,
            &spec,
            window,
            self.region.as_deref(),
        )
        .await?;
        let t1 = now_millis();
        let production = self
            .registry
            .production(&spec.name)
            .await
            .map_err(registry_stop)?;
        let (production_version, production_artifact) = match production {
            Some((v, a)) => (Some(v), Some(a)),
            None => (None, None),
        };
        let owned = (spec.clone(), manifest.clone());
        let outcome = mlops_runtime::cpu::run(move || {
            train(
                &owned.0,
                &owned.1,
                &frame,
                production_artifact.as_ref(),
                started,
            )
        })
        .await?;
        let t2 = now_millis();
        let schema_ids = self.schema_ids(&manifest.label_dataset).await;
        let best = outcome.best.map(|i| &outcome.trials[i]);
        let mut record = json!({
            "spec": spec,
            "snapshot_id": manifest.id,
            "view": manifest.view,
            "view_version": manifest.view_version,
            "rows": manifest.rows,
            "schema_ids": schema_ids,
            "trials": outcome.trials.iter().map(|t| json!({
                "algorithm": t.algorithm,
                "hyperparameters": t.hyperparameters,
                "metrics": t.metrics,
                "folds": t.folds,
            })).collect::<Vec<_>>(),
            "best": outcome.best,
            "gate": gate_json(&outcome.gate, production_version),
            "registered_version": null,
            "timings_ms": {"snapshot": t1 - t0, "search": t2 - t1},
        });
        let Some(artifact) = outcome.artifact else {
            record["reason"] = json!(outcome.gate.reason);
            return Ok(("rejected_by_gate", record));
        };
        let lineage = json!({
            "training_run_id": run.id,
            "snapshot_id": manifest.id,
            "feature_view": manifest.view,
            "feature_view_version": manifest.view_version,
            "schema_ids": schema_ids,
            "code_version": CODE_VERSION,
            "request_ids": requests.iter().map(|r| r.request_id.clone()).collect::<Vec<_>>(),
            "triggering_event_ids": requests.iter().filter_map(|r| r.triggering_event_id.clone()).collect::<Vec<_>>(),
        });
        let reasons: Vec<&str> = requests.iter().map(|r| r.reason.as_str()).collect();
        let mut registration = json!({
            "artifact": artifact,
            "lineage": lineage,
            "reason": format!(
                "training run {} ({}) passed the gate: {} {:.4}",
                run.id,
                dedup(&reasons).join(", "),
                outcome.gate.metric,
                outcome.gate.candidate
            ),
            "actor": "training",
            "trace_id": run.trace_id,
        });
        if let Some(percent) = spec.canary_percent {
            registration["canary_percent"] = json!(percent);
        }
        // A registration is idempotent by the run's id: one whose answer was lost (a
        // gateway's 504, the registry restarting) is sent again with the run's next start,
        // and names the version it made the first time.
        let version = self
            .registry
            .register(registration)
            .await
            .map_err(registry_stop)?;
        record["registered_version"] = json!(version);
        record["timings_ms"]["register"] = json!(now_millis() - t2);
        if let Some(best) = best {
            record["algorithm"] = json!(best.algorithm);
        }
        Ok(("succeeded", record))
    }

    /// Schema Registry ids of the run's inputs: the label dataset's raw events and labels.
    async fn schema_ids(&self, dataset: &str) -> Vec<i32> {
        let registry = self.producer.codec().registry();
        let mut ids = Vec::new();
        for topic in [topics::raw(dataset), topics::LABELS.to_owned()] {
            if let Ok(registered) = registry.latest(&topics::value_subject(&topic)).await {
                ids.push(registered.id as i32);
            }
        }
        ids
    }

    /// Publishes the results of finished runs not yet on `training.runs`.
    async fn publish_results(&self, topic_ready: &mut bool) -> Result<(), String> {
        let pending = self.store.unpublished().await.map_err(|e| e.to_string())?;
        if pending.is_empty() {
            return Ok(());
        }
        if !*topic_ready {
            mlops_kafka::ensure_topics(&self.kafka, &[TopicSpec::new(topics::TRAINING_RUNS, 1)])
                .await
                .map_err(|e| e.to_string())?;
            *topic_ready = true;
        }
        for run in pending {
            let result = result_of(&run);
            let span = mlops_telemetry::continue_flow(
                info_span!("run result", run = %run.id, model = %run.model),
                run.traceparent.as_deref(),
                run.trace_id.as_deref(),
            );
            self.producer
                .send_event(
                    topics::TRAINING_RUNS,
                    Some(run.model.as_bytes()),
                    &result,
                    OwnedHeaders::new(),
                )
                .instrument(span)
                .await
                .map_err(|e| e.to_string())?;
            self.store
                .mark_published(&run.id)
                .await
                .map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

fn dedup<'a>(items: &[&'a str]) -> Vec<&'a str> {
    let mut out: Vec<&str> = Vec::new();
    for item in items {
        if !out.contains(item) {
            out.push(item);
        }
    }
    out
}

/// The training window of a coalesced run: the union of its requests' windows, unbounded
/// on a side where any request is.
fn window_of(requests: &[RequestRow]) -> (Option<i64>, Option<i64>) {
    let start = requests
        .iter()
        .map(|r| r.window_start)
        .collect::<Option<Vec<i64>>>()
        .and_then(|s| s.into_iter().min());
    let end = requests
        .iter()
        .map(|r| r.window_end)
        .collect::<Option<Vec<i64>>>()
        .and_then(|s| s.into_iter().max());
    (start, end)
}

fn request_json(r: &RequestRow) -> Json {
    json!({
        "request_id": r.request_id,
        "reason": r.reason,
        "triggering_event_id": r.triggering_event_id,
        "requested_by": r.requested_by,
        "requested_at": r.requested_at,
        "window_start": r.window_start,
        "window_end": r.window_end,
    })
}

fn gate_json(gate: &GateReport, production_version: Option<i64>) -> Json {
    let mut body = serde_json::to_value(gate).unwrap_or(Json::Null);
    body["production_version"] = json!(production_version);
    body
}

/// The `TrainingRunResult` of a finished run, from its record.
pub fn result_of(run: &RunRow) -> TrainingRunResult {
    let record = run.record.clone().unwrap_or(Json::Null);
    let best = record["best"]
        .as_u64()
        .and_then(|i| record["trials"].get(i as usize))
        .cloned()
        .unwrap_or(Json::Null);
    let status = match run.status.as_str() {
        "succeeded" => TrainingRunStatus::Succeeded,
        "rejected_by_gate" => TrainingRunStatus::RejectedByGate,
        _ => TrainingRunStatus::Failed,
    };
    let strings = |v: &Json| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    };
    TrainingRunResult {
        run_id: run.id.clone(),
        request_ids: strings(&record["request_ids"]),
        model_name: run.model.clone(),
        status,
        reason: record["reason"].as_str().map(str::to_owned),
        algorithm: best["algorithm"].as_str().unwrap_or_default().to_owned(),
        hyperparameters: best["hyperparameters"]
            .as_object()
            .map(|h| h.iter().map(|(k, v)| (k.clone(), v.to_string())).collect())
            .unwrap_or_default(),
        metrics: best["metrics"]
            .as_object()
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| v.as_f64().map(|v| (k.clone(), v)))
                    .collect::<BTreeMap<_, _>>()
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default(),
        snapshot_id: record["snapshot_id"].as_str().map(str::to_owned),
        feature_view: record["view"].as_str().map(str::to_owned),
        feature_view_version: record["view_version"].as_i64().map(|v| v as i32),
        registered_version: record["registered_version"].as_i64().map(|v| v as i32),
        code_version: CODE_VERSION.to_owned(),
        started_at: run.started_at.unwrap_or(run.created_at),
        finished_at: run.finished_at.unwrap_or_default(),
        trace_id: run.trace_id.clone(),
    }
}

/// A `TrainingRequest` made here (the API's manual runs, the schedule).
pub fn request(model: &str, reason: mlops_events::TrainingReason, by: &str) -> TrainingRequest {
    TrainingRequest {
        request_id: mlops_events::new_id(),
        model_name: model.to_owned(),
        reason,
        window_start: None,
        window_end: None,
        triggering_event_id: None,
        requested_by: by.to_owned(),
        requested_at: now_millis(),
        trace_id: None,
    }
}

impl Runner {
    /// Asks for a run of every model whose spec has a `schedule`, each period, through
    /// `training.requests` like any other trigger (so it coalesces with them).
    pub async fn tick_schedules(
        self: Arc<Self>,
        started: i64,
        cancel: CancellationToken,
    ) -> Result<(), StoreError> {
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                ticked = self.tick(started) => ticked?,
            }
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(Duration::from_secs(15)) => {}
            }
        }
    }

    /// Requests a run of every model whose schedule is due.
    async fn tick(&self, started: i64) -> Result<(), StoreError> {
        {
            let now = now_millis();
            for spec in self.store.specs().await? {
                let Some(period) = spec.schedule_ms() else {
                    continue;
                };
                let last = self
                    .store
                    .last_request(&spec.name, "schedule")
                    .await?
                    .unwrap_or(started);
                if now - last >= period {
                    let request = request(
                        &spec.name,
                        mlops_events::TrainingReason::Schedule,
                        "schedule",
                    );
                    match self
                        .producer
                        .send_event(
                            topics::TRAINING_REQUESTS,
                            Some(spec.name.as_bytes()),
                            &request,
                            OwnedHeaders::new(),
                        )
                        .await
                    {
                        // Recorded here too, so the next tick sees it even before the
                        // consumer does (the consumer then finds it already recorded).
                        Ok(_) => {
                            self.request(&request).await?;
                        }
                        Err(e) => {
                            warn!(model = %spec.name, error = %e, "scheduled request not sent")
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// How a run stops on the registry's error: waits and starts again when the registry was
/// not reached or answered 502–504, fails on a refusal.
fn registry_stop(error: String) -> Stop {
    if mlops_ml::registry::is_unreachable(&error) {
        Stop::Transient(error)
    } else {
        Stop::Failed(error)
    }
}
