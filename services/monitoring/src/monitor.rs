//! What the monitor knows, model by model, and what it decides: fed prediction logs,
//! labels and lifecycle events, ticked by the clock, it answers with the events to publish
//! (`Action`). No I/O here: the service around it consumes, fetches references and
//! publishes.
//!
//! - Drift of the production version's inputs, window by window (`detector`), against the
//!   reference statistics of the snapshot it was trained on; an incident asks for one
//!   retraining (unless a candidate is already in canary).
//! - Prediction drift: each window's outputs against the version's first full window (KS).
//! - Data quality: null and out-of-range rates per feature; volume against recent windows.
//! - Performance with delayed labels: predictions kept (bounded) until their label arrives,
//!   joined by request id, else by the entity's latest unlabelled prediction; metrics per
//!   window of labels, and the label delay.
//! - Canary analysis (`canary`): canary against production since the canary started.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
};

use mlops_events::{
    CanaryDecision, DriftEvent, GroundTruthLabel, LabelValue, ModelLifecycleEvent, ModelStage,
    PredictionLog, ServingRole, TrainingReason, TrainingRequest,
};
use mlops_ml::ReferenceStatistics;
use serde::{Deserialize, Serialize};
use serde_json::{Value as Json, json};

use crate::{
    canary::{self, Arm, CanarySettings, push_bounded},
    detector::{Detector, Thresholds, WindowReport},
};

/// How the monitor watches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MonitorSettings {
    /// A window closes after this many predictions...
    pub window_size: usize,
    /// ...or this long after its first one, if it holds `min_window_size` by then.
    pub window_seconds: u64,
    pub min_window_size: usize,
    pub thresholds: Thresholds,
    /// Thresholds of their own for some features (by raw feature name).
    pub feature_thresholds: BTreeMap<String, Thresholds>,
    /// Clean windows in a row that close an incident.
    pub clear_after: usize,
    /// Windows after an incident closed before another may open.
    pub cooldown_windows: usize,
    /// Whether an incident asks for a retraining (`training.requests`, reason `drift`).
    pub retrain_on_drift: bool,
    /// While an incident stays open, no candidate is in canary and no new version has been
    /// registered since retraining was asked for, ask again after this many more drifted
    /// windows (0: never) and at least `retrain_retry_ms`: a retraining that did not pass
    /// its gate — too few labels since the change, say — is retried on the data that
    /// arrived since.
    pub retrain_retry_windows: usize,
    pub retrain_retry_ms: u64,
    /// While an incident stays open, how many more times it asks for retraining after the
    /// candidate that answered it was rolled back (0: never) — each time after
    /// `retrain_retry_windows` more drifted windows and at least `retrain_after_rollback_ms`
    /// after the rollback: a later run learns from the labels that arrived since.
    pub retrain_after_rollbacks: usize,
    pub retrain_after_rollback_ms: u64,
    /// The labels that retraining learns from: all of them when unset; else those from
    /// this long (ms) before the drifted window's first prediction on (0: only since the
    /// change; labels' event times and prediction times must share a clock for this).
    pub retrain_lookback_ms: Option<i64>,
    /// Labelled predictions per performance window.
    pub performance_window: usize,
    /// Predictions kept per model awaiting their label, and labels naming a request not
    /// seen yet awaiting its prediction; the oldest go first.
    pub pending_labels: usize,
    /// Windows (drift and performance) kept per version for the report.
    pub history: usize,
    pub canary: CanarySettings,
}

impl Default for MonitorSettings {
    fn default() -> Self {
        Self {
            window_size: 500,
            window_seconds: 60,
            min_window_size: 50,
            thresholds: Thresholds::default(),
            feature_thresholds: BTreeMap::new(),
            clear_after: 2,
            cooldown_windows: 1,
            retrain_on_drift: true,
            retrain_retry_windows: 5,
            retrain_retry_ms: 60_000,
            retrain_after_rollbacks: 2,
            retrain_after_rollback_ms: 600_000,
            retrain_lookback_ms: None,
            performance_window: 100,
            pending_labels: 100_000,
            history: 100,
            canary: CanarySettings::default(),
        }
    }
}

/// What the monitor needs of a version: its task and its reference.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub task: String,
    /// The feature view the version reads.
    pub view: String,
    pub snapshot_id: String,
    pub reference: BTreeMap<String, ReferenceStatistics>,
}

/// A version's latest figures: (model, version, (feature, statistic, value) of its last
/// window, metrics of its last labelled window).
pub type Latest = (
    String,
    i32,
    Vec<(String, String, f64)>,
    BTreeMap<String, f64>,
);

/// What to publish.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Drift(DriftEvent, Option<TrainingRequest>),
    /// A retraining asked again for an incident still open.
    Retrain(TrainingRequest),
    Decide(CanaryDecision),
}

#[derive(Debug, Clone, Serialize)]
struct WindowSummary {
    start: i64,
    end: i64,
    size: usize,
    statistics: Vec<Json>,
    quality: BTreeMap<String, crate::detector::Quality>,
    prediction_drift: Option<Json>,
    volume: Json,
    incident: Option<String>,
    incident_closed: bool,
}

impl WindowSummary {
    /// What every closed window reports: its span, each statistic and whether it drifted,
    /// data quality; the caller adds what it knows besides.
    fn of(report: &WindowReport) -> Self {
        Self {
            start: report.start,
            end: report.end,
            size: report.size,
            statistics: report
                .statistics
                .iter()
                .map(|(f, drifted)| {
                    json!({"feature": f.feature, "statistic": f.statistic, "value": f.value,
                           "threshold": f.threshold, "p_value": f.p_value, "drifted": drifted})
                })
                .collect(),
            quality: report.quality.clone(),
            prediction_drift: None,
            volume: Json::Null,
            incident: None,
            incident_closed: report.closed,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
struct PerformanceSummary {
    start: i64,
    end: i64,
    labels: usize,
    metrics: BTreeMap<String, f64>,
    label_lag_seconds: Json,
}

#[derive(Default)]
struct VersionState {
    info: Option<Arc<VersionInfo>>,
    detector: Option<Detector>,
    /// The same statistics over every row of the version's feature view, scored or not
    /// (reported; incidents come from what production answers).
    rows_detector: Option<Detector>,
    feature_rows: u64,
    row_windows: VecDeque<WindowSummary>,
    predictions: u64,
    /// Requests it failed where production answered (logged with an error).
    failed: u64,
    labels: u64,
    outputs: Vec<f64>,
    output_baseline: Option<Vec<f64>>,
    rates: VecDeque<f64>,
    windows: VecDeque<WindowSummary>,
    /// The open performance window: (truth, score, label lag ms, predicted_at).
    scored: Vec<(LabelValue, f64, Option<String>, i64, i64)>,
    performance: VecDeque<PerformanceSummary>,
    lags_ms: VecDeque<f64>,
    incident: Option<OpenIncident>,
}

/// The incident open on a version: its drift event, its first window's start, and the
/// drifted windows since retraining was last asked for.
struct OpenIncident {
    event_id: String,
    start: i64,
    drifted_since_request: usize,
    /// When retraining was last asked for (the window's end), and the model's newest
    /// version then: a newer one is the answer.
    asked_at: i64,
    asked_version: i32,
    /// Retrainings asked for after a rollback of the answer.
    after_rollbacks: usize,
}

#[derive(Clone)]
struct Pending {
    request_id: String,
    entity_id: Option<String>,
    version: i32,
    output: f64,
    predicted_label: Option<String>,
    predicted_at: i64,
}

struct CanaryState {
    version: i32,
    percent: f64,
    since: i64,
    canary: Arm,
    production: Arm,
    /// Set once a verdict was published for this stretch; cleared by the lifecycle event
    /// that follows it (a widening starts a new stretch).
    decided: Option<String>,
    /// The flow that brought the candidate here (from its lifecycle event), which the
    /// verdict continues.
    trace_id: Option<String>,
}

#[derive(Default)]
struct ModelState {
    production: Option<i32>,
    canary: Option<CanaryState>,
    versions: BTreeMap<i32, VersionState>,
    /// Answers awaiting their label, by request id (production's, and a shadow's to the
    /// same request): at most `pending_labels` requests.
    by_request: Awaiting<Vec<Pending>>,
    /// Answers counted, as `<request id> <version>`, so that a copy read again by the
    /// at-least-once consumer is not counted twice — also once its label joined it and it
    /// left `by_request`, or when it failed and never waited there: the newest
    /// 2 × `pending_labels` (production's and a shadow's answer to each request waiting).
    counted: Awaiting<()>,
    drift_events: VecDeque<DriftEvent>,
    decisions: VecDeque<CanaryDecision>,
    /// The newest version any lifecycle event named.
    newest_version: i32,
    /// The last version archived while in canary (rolled back), and when.
    rolled_back: Option<(i32, i64)>,
}

#[derive(Default)]
pub struct Monitor {
    settings: MonitorSettings,
    models: BTreeMap<String, ModelState>,
    /// Labels that named their request, by request id, kept for every answer to it: the
    /// label topic and the prediction log are read apart, and the prediction log's batches
    /// linger, so a label sent at once after its answer, or read back faster after a
    /// restart, often comes first; a shadow's answer is logged after production's; and a
    /// copy of a label read again must be known as one. At most `pending_labels`, the
    /// oldest go first.
    labels: Awaiting<HeldLabel>,
    /// Copies of labels already held (read again by an at-least-once consumer), ignored.
    repeated_labels: u64,
}

/// A label kept by its request id, and the answers it met so far.
struct HeldLabel {
    label: GroundTruthLabel,
    /// (model, version) of each answer it met: graded, or failed without an answer.
    met: Vec<(String, i32)>,
}

impl HeldLabel {
    fn met(&self, model: &str, version: i32) -> bool {
        self.met.iter().any(|(m, v)| m == model && *v == version)
    }
}

/// Halves of a join waiting for the other, by request id — predictions for their label,
/// labels that came first for their prediction — at most a capacity of them, the oldest
/// going first.
struct Awaiting<V> {
    by_id: HashMap<String, V>,
    /// Ids in arrival order, for eviction and for the newest first; an id no longer in
    /// `by_id` (joined) leaves lazily — a join removes only its map entry, in O(1) — and
    /// such ids are swept out once they make up half of it.
    order: VecDeque<String>,
}

impl<V> Default for Awaiting<V> {
    fn default() -> Self {
        Self {
            by_id: HashMap::new(),
            order: VecDeque::new(),
        }
    }
}

impl<V> Awaiting<V> {
    /// Adds `value` under `id`, making room by dropping the oldest beyond `capacity`.
    fn insert(&mut self, id: String, value: V, capacity: usize) {
        let capacity = capacity.max(1);
        while self.by_id.len() >= capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_id.remove(&oldest);
        }
        self.order.push_back(id.clone());
        self.by_id.insert(id, value);
        if self.order.len() > 2 * capacity {
            let by_id = &self.by_id;
            self.order.retain(|id| by_id.contains_key(id));
        }
    }

    fn remove(&mut self, id: &str) -> Option<V> {
        self.by_id.remove(id)
    }

    fn get(&self, id: &str) -> Option<&V> {
        self.by_id.get(id)
    }

    fn get_mut(&mut self, id: &str) -> Option<&mut V> {
        self.by_id.get_mut(id)
    }

    fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The waiting values, newest first.
    fn newest_first(&self) -> impl Iterator<Item = &V> {
        self.order.iter().rev().filter_map(|id| self.by_id.get(id))
    }
}

impl Monitor {
    pub fn new(settings: MonitorSettings) -> Self {
        Self {
            settings,
            ..Self::default()
        }
    }

    /// Whether the version's reference is still to be fetched.
    pub fn needs_info(&self, model: &str, version: i32) -> bool {
        self.models
            .get(model)
            .and_then(|m| m.versions.get(&version))
            .is_none_or(|v| v.info.is_none())
    }

    pub fn set_info(&mut self, model: &str, version: i32, info: Arc<VersionInfo>) {
        let settings = &self.settings;
        let state = self
            .models
            .entry(model.to_owned())
            .or_default()
            .versions
            .entry(version)
            .or_default();
        let detector = || {
            Detector::new(
                info.reference.clone(),
                settings.thresholds,
                settings.window_size,
            )
            .with_feature_thresholds(settings.feature_thresholds.clone())
            .with_hysteresis(settings.clear_after, settings.cooldown_windows)
        };
        state.detector = Some(detector());
        state.rows_detector = Some(detector());
        state.info = Some(info);
    }

    /// The trace a published drift incident opened.
    pub fn drift_trace(&self, model: &str, event_id: &str) -> Option<String> {
        self.models
            .get(model)?
            .drift_events
            .iter()
            .find(|e| e.event_id == event_id)?
            .trace_id
            .clone()
    }

    /// Records the trace a published drift incident opened, for the report.
    pub fn drift_traced(&mut self, model: &str, event_id: &str, trace_id: Option<String>) {
        let recorded = self
            .models
            .get_mut(model)
            .and_then(|m| m.drift_events.iter_mut().find(|e| e.event_id == event_id));
        if let Some(event) = recorded {
            event.trace_id = trace_id;
        }
    }

    /// A lifecycle event: which version is in production, which in canary at what share.
    pub fn lifecycle(&mut self, event: &ModelLifecycleEvent) {
        let model = self.models.entry(event.model_name.clone()).or_default();
        model.newest_version = model.newest_version.max(event.version);
        match event.stage {
            ModelStage::Production => {
                model.production = Some(event.version);
                if model
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version == event.version)
                {
                    model.canary = None;
                }
            }
            ModelStage::Canary => {
                let percent = event.canary_percent.unwrap_or(0.0);
                let same = model
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version == event.version && c.percent == percent);
                if !same {
                    model.canary = Some(CanaryState {
                        version: event.version,
                        percent,
                        since: event.occurred_at,
                        canary: Arm::default(),
                        production: Arm::default(),
                        decided: None,
                        trace_id: event.trace_id.clone(),
                    });
                }
            }
            ModelStage::Archived | ModelStage::Candidate => {
                if model
                    .canary
                    .as_ref()
                    .is_some_and(|c| c.version == event.version)
                {
                    model.canary = None;
                    if event.stage == ModelStage::Archived {
                        model.rolled_back = Some((event.version, event.occurred_at));
                    }
                }
                if model.production == Some(event.version) {
                    model.production = None;
                }
            }
        }
    }

    /// A logged prediction; graded at once when its label came first. A copy of one
    /// already counted (read again) is ignored.
    pub fn prediction(&mut self, log: &PredictionLog) -> Vec<Action> {
        let held = self.labels.get(&log.request_id);
        if held.is_some_and(|h| h.met(&log.model_name, log.model_version)) {
            return Vec::new();
        }
        let label = held.map(|h| h.label.clone());
        let Some(actions) = self.observe_prediction(log) else {
            return Vec::new();
        };
        if let Some(label) = label {
            let met = if log.error.is_some() {
                vec![(log.model_name.clone(), log.model_version)]
            } else {
                self.grade(&label)
            };
            if let Some(held) = self.labels.get_mut(&log.request_id) {
                held.met.extend(met);
            }
        }
        actions
    }

    /// Counts `log` for its version: drift, canary, the answers waiting for labels. `None`
    /// for a copy of an answer counted already.
    fn observe_prediction(&mut self, log: &PredictionLog) -> Option<Vec<Action>> {
        let settings = &self.settings;
        let model = self.models.entry(log.model_name.clone()).or_default();
        let answer = format!("{} {}", log.request_id, log.model_version);
        if model.counted.get(&answer).is_some() {
            return None;
        }
        model
            .counted
            .insert(answer, (), 2 * settings.pending_labels);
        if log.error.is_some() {
            // A request the version failed (production answered it): it counts against
            // the version, and has no answer to join labels to or watch for drift.
            if let Some(canary) = &mut model.canary
                && log.predicted_at >= canary.since
                && log.model_version == canary.version
            {
                canary
                    .canary
                    .prediction(None, log.latency_us as f64 / 1000.0);
            }
            model.versions.entry(log.model_version).or_default().failed += 1;
            return Some(Vec::new());
        }
        let pending = Pending {
            request_id: log.request_id.clone(),
            entity_id: log.entity_id.clone(),
            version: log.model_version,
            output: log.output,
            predicted_label: log.predicted_label.clone(),
            predicted_at: log.predicted_at,
        };
        match model.by_request.get_mut(&log.request_id) {
            Some(answers) if answers.iter().any(|p| p.version == log.model_version) => {
                return None;
            }
            // Another version's answer to the same request: a shadow's beside production's.
            Some(answers) => answers.push(pending),
            None => model.by_request.insert(
                log.request_id.clone(),
                vec![pending],
                settings.pending_labels,
            ),
        }

        if let Some(canary) = &mut model.canary
            && log.predicted_at >= canary.since
        {
            let latency_ms = log.latency_us as f64 / 1000.0;
            if log.model_version == canary.version {
                canary.canary.prediction(Some(log.output), latency_ms);
            } else if log.role == ServingRole::Production {
                canary.production.prediction(Some(log.output), latency_ms);
            }
        }

        let version = model.versions.entry(log.model_version).or_default();
        version.predictions += 1;
        // Drift is watched on the traffic production answers.
        if log.role != ServingRole::Production {
            return Some(Vec::new());
        }
        version.outputs.push(log.output);
        let report = version
            .detector
            .as_mut()
            .and_then(|d| d.observe(&log.features, log.predicted_at));
        Some(match report {
            Some(report) => {
                close_window(settings, &log.model_name, log.model_version, model, report)
            }
            None => Vec::new(),
        })
    }

    /// A row of feature view `view` (numeric values by name, categories as
    /// `feature__value` = 1), computed at `at`: watched for every model whose production
    /// version reads the view, against that version's reference.
    pub fn feature_row(&mut self, view: &str, features: &HashMap<String, f64>, at: i64) {
        let settings = &self.settings;
        for model in self.models.values_mut() {
            let Some(state) = model
                .production
                .and_then(|v| model.versions.get_mut(&v))
                .filter(|s| s.info.as_ref().is_some_and(|i| i.view == view))
            else {
                continue;
            };
            state.feature_rows += 1;
            let report = state
                .rows_detector
                .as_mut()
                .and_then(|d| d.observe(features, at));
            if let Some(report) = report {
                record_rows_window(settings, state, report);
            }
        }
    }

    /// Whether a version in production reads `view` (whose rows are then worth decoding).
    pub fn watches(&self, view: &str) -> bool {
        self.models
            .values()
            .filter_map(|m| m.production.and_then(|v| m.versions.get(&v)))
            .any(|s| s.info.as_ref().is_some_and(|i| i.view == view))
    }

    /// The versions in production or canary whose reference is still to be fetched.
    pub fn wanted_info(&self) -> Vec<(String, i32)> {
        let mut wanted = Vec::new();
        for (name, model) in &self.models {
            let serving = model
                .production
                .into_iter()
                .chain(model.canary.as_ref().map(|c| c.version));
            for version in serving {
                if model
                    .versions
                    .get(&version)
                    .is_none_or(|v| v.info.is_none())
                {
                    wanted.push((name.clone(), version));
                }
            }
        }
        wanted
    }

    /// A label: joined to its request's answers, scored, and counted for the canary. One
    /// naming its request is kept for the answers still to come (see `labels`); a copy of
    /// one kept is ignored.
    pub fn label(&mut self, label: &GroundTruthLabel) {
        let Some(request_id) = &label.request_id else {
            self.grade(label);
            return;
        };
        if self.labels.get(request_id).is_some() {
            self.repeated_labels += 1;
            return;
        }
        let met = self.grade(label);
        self.labels.insert(
            request_id.clone(),
            HeldLabel {
                label: label.clone(),
                met,
            },
            self.settings.pending_labels,
        );
    }

    /// Joins `label` to its request's answers in every model that made one; the (model,
    /// version) of each answer graded.
    fn grade(&mut self, label: &GroundTruthLabel) -> Vec<(String, i32)> {
        let settings = &self.settings;
        let mut graded = Vec::new();
        // The model is not named on a label: every model that made the prediction learns.
        for (name, model) in &mut self.models {
            // A label naming its request grades that request's answers or none: its request not
            // seen (yet, or any more) is no reason to grade another request of the same
            // entity, whose amount may be on the other side of the boundary (the likely
            // cause of a sound retrained canary rolled back after a fault run's kills).
            let joined = match &label.request_id {
                Some(id) => model.by_request.remove(id),
                // No request named: the entity's latest request still without a label.
                None => {
                    let latest = model
                        .by_request
                        .newest_first()
                        .filter_map(|answers| answers.first())
                        .find(|p| p.entity_id.as_deref() == Some(label.entity_id.as_str()))
                        .map(|p| p.request_id.clone());
                    latest.and_then(|id| model.by_request.remove(&id))
                }
            };
            for prediction in joined.into_iter().flatten() {
                graded.push((name.clone(), prediction.version));
                let lag = (label.received_at - prediction.predicted_at) as f64;
                let Some(version) = model.versions.get_mut(&prediction.version) else {
                    continue;
                };
                let task = version.info.as_ref().map_or("", |i| i.task.as_str());
                let loss = loss(task, &prediction, &label.label);
                if let Some(canary) = &mut model.canary
                    && prediction.predicted_at >= canary.since
                    && let Some(loss) = loss
                {
                    if prediction.version == canary.version {
                        canary.canary.loss(loss);
                    } else if Some(prediction.version) == model.production {
                        canary.production.loss(loss);
                    }
                }
                version.labels += 1;
                push_bounded(&mut version.lags_ms, lag, 10_000);
                version.scored.push((
                    label.label.clone(),
                    prediction.output,
                    prediction.predicted_label.clone(),
                    lag as i64,
                    prediction.predicted_at,
                ));
                if version.scored.len() >= settings.performance_window.max(1) {
                    let task = task.to_owned();
                    let summary = performance(&task, std::mem::take(&mut version.scored));
                    push_bounded(&mut version.performance, summary, settings.history);
                }
            }
        }
        graded
    }

    /// The clock: closes time windows that are due, judges canaries.
    pub fn tick(&mut self, now: i64) -> Vec<Action> {
        let settings = &self.settings;
        let mut actions = Vec::new();
        for (name, model) in &mut self.models {
            let due: Vec<i32> = model
                .versions
                .iter()
                .filter_map(|(v, state)| {
                    let (size, first) = state.detector.as_ref()?.pending();
                    (size >= settings.min_window_size.max(1)
                        && now - first >= settings.window_seconds as i64 * 1000)
                        .then_some(*v)
                })
                .collect();
            for v in due {
                let report = model
                    .versions
                    .get_mut(&v)
                    .and_then(|s| s.detector.as_mut())
                    .and_then(|d| d.close(settings.min_window_size));
                if let Some(report) = report {
                    actions.extend(close_window(settings, name, v, model, report));
                }
            }
            for state in model.versions.values_mut() {
                let report = state
                    .rows_detector
                    .as_mut()
                    .filter(|d| {
                        let (size, first) = d.pending();
                        size > 0 && now - first >= settings.window_seconds as i64 * 1000
                    })
                    .and_then(|d| d.close(settings.min_window_size));
                if let Some(report) = report {
                    record_rows_window(settings, state, report);
                }
            }
            let production = model.production;
            if let Some(canary) = &mut model.canary
                && canary.decided.is_none()
            {
                let verdict = canary::judge(
                    &settings.canary,
                    &canary.canary,
                    production.map(|_| &canary.production),
                    canary.percent,
                    now - canary.since,
                );
                if let Some(verdict) = verdict {
                    let decision = CanaryDecision {
                        decision_id: mlops_events::new_id(),
                        model_name: name.clone(),
                        canary_version: canary.version,
                        production_version: production,
                        decision: verdict.decision,
                        new_percent: verdict.new_percent,
                        evidence: verdict.evidence,
                        reason: verdict.reason,
                        decided_at: now,
                        trace_id: canary.trace_id.clone(),
                    };
                    canary.decided = Some(decision.decision_id.clone());
                    push_bounded(&mut model.decisions, decision.clone(), 20);
                    actions.push(Action::Decide(decision));
                }
            }
        }
        actions
    }

    pub fn model_names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// The report of `GET /v1/monitoring/models/{name}`.
    pub fn report(&self, name: &str) -> Option<Json> {
        let model = self.models.get(name)?;
        let versions: Vec<Json> = model
            .versions
            .iter()
            .map(|(v, state)| {
                let stage = if model.production == Some(*v) {
                    "production"
                } else if model.canary.as_ref().is_some_and(|c| c.version == *v) {
                    "canary"
                } else {
                    "other"
                };
                let (open, _) = state.detector.as_ref().map_or((0, 0), Detector::pending);
                json!({
                    "version": v,
                    "stage": stage,
                    "reference_snapshot": state.info.as_ref().map(|i| i.snapshot_id.clone()),
                    "task": state.info.as_ref().map(|i| i.task.clone()),
                    "predictions": state.predictions,
                    "failed_requests": state.failed,
                    "feature_rows": state.feature_rows,
                    "feature_row_windows": state.row_windows,
                    "labels": state.labels,
                    "current_window": {"size": open},
                    "incident_open": state.detector.as_ref().is_some_and(Detector::is_open),
                    "windows": state.windows,
                    "performance": state.performance,
                    "label_lag_seconds": lag_summary(state.lags_ms.iter().copied()),
                })
            })
            .collect();
        let canary = model.canary.as_ref().map(|c| {
            let verdict = canary::judge(
                &CanarySettings {
                    min_requests: 0,
                    min_labels: 0,
                    min_seconds: 0,
                    ..self.settings.canary.clone()
                },
                &c.canary,
                model.production.map(|_| &c.production),
                c.percent,
                mlops_events::now_millis() - c.since,
            );
            json!({
                "version": c.version, "percent": c.percent, "since": c.since,
                "decided": c.decided,
                "evidence": verdict.map(|v| v.evidence),
            })
        });
        Some(json!({
            "name": name,
            "production": model.production,
            "canary": canary,
            "versions": versions,
            "drift_events": model.drift_events,
            "canary_decisions": model.decisions,
            // Joins in waiting: this model's predictions without their label yet, and the
            // labels (of any model) that came before their prediction.
            "predictions_awaiting_label": model.by_request.len(),
            "labels_awaiting_prediction": self
                .labels
                .by_id
                .values()
                .filter(|held| held.met.is_empty())
                .count(),
            "labels_repeated": self.repeated_labels,
        }))
    }

    /// Each version's latest window statistics and performance, for the metrics.
    pub fn latest(&self) -> Vec<Latest> {
        let mut out = Vec::new();
        for (name, model) in &self.models {
            for (v, state) in &model.versions {
                let drift = state
                    .windows
                    .back()
                    .map(|w| {
                        w.statistics
                            .iter()
                            .filter_map(|s| {
                                Some((
                                    s["feature"].as_str()?.to_owned(),
                                    s["statistic"].as_str()?.to_owned(),
                                    s["value"].as_f64()?,
                                ))
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                let performance = state
                    .performance
                    .back()
                    .map(|p| p.metrics.clone())
                    .unwrap_or_default();
                out.push((name.clone(), *v, drift, performance));
            }
        }
        out
    }
}

fn close_window(
    settings: &MonitorSettings,
    name: &str,
    version: i32,
    model: &mut ModelState,
    report: WindowReport,
) -> Vec<Action> {
    let canary_in_flight = model.canary.is_some();
    let newest_version = model.newest_version;
    // When the newest version, an incident's answer, was rolled back.
    let newest_rolled_back_at = model
        .rolled_back
        .filter(|(v, _)| *v == newest_version)
        .map(|(_, at)| at);
    let Some(state) = model.versions.get_mut(&version) else {
        return Vec::new();
    };
    let outputs = std::mem::take(&mut state.outputs);
    let prediction_drift = match &state.output_baseline {
        None => {
            state.output_baseline = Some(outputs);
            None
        }
        Some(baseline) if !outputs.is_empty() => {
            let mut a = baseline.clone();
            let mut b = outputs;
            let (d, p) = mlops_ml::drift::ks_two_sample(&mut a, &mut b);
            Some(json!({"statistic": "ks", "value": d, "p_value": p}))
        }
        Some(_) => None,
    };
    let seconds = ((report.end - report.start) as f64 / 1000.0).max(1.0);
    let rate = report.size as f64 / seconds;
    let recent = if state.rates.is_empty() {
        None
    } else {
        Some(state.rates.iter().sum::<f64>() / state.rates.len() as f64)
    };
    push_bounded(&mut state.rates, rate, 10);
    let mut summary = WindowSummary::of(&report);
    summary.prediction_drift = prediction_drift;
    summary.volume = json!({"per_second": rate, "recent_per_second": recent,
                            "ratio": recent.map(|r| if r > 0.0 { rate / r } else { 0.0 })});
    let mut actions = Vec::new();
    if let Some((features, severity)) = report.opened {
        let event = DriftEvent {
            event_id: mlops_events::new_id(),
            model_name: name.to_owned(),
            model_version: version,
            window_start: report.start,
            window_end: report.end,
            window_size: report.size as i64,
            features,
            severity,
            detected_at: mlops_events::now_millis(),
            trace_id: None,
        };
        summary.incident = Some(event.event_id.clone());
        // A candidate already in canary is the answer to this drift in the making.
        let request = (settings.retrain_on_drift && !canary_in_flight).then(|| {
            drift_retraining(
                settings,
                name,
                &event.event_id,
                report.start,
                event.detected_at,
            )
        });
        state.incident = Some(OpenIncident {
            event_id: event.event_id.clone(),
            start: report.start,
            drifted_since_request: 0,
            asked_at: report.end,
            asked_version: newest_version,
            after_rollbacks: 0,
        });
        push_bounded(&mut model.drift_events, event.clone(), 20);
        actions.push(Action::Drift(event, request));
    } else if report.closed {
        state.incident = None;
    } else if let Some(incident) = &mut state.incident
        && report.statistics.iter().any(|(_, drifted)| *drifted)
    {
        incident.drifted_since_request += 1;
        let retry = settings.retrain_retry_windows;
        // Nothing answered the ask: the run did not pass its gate, say.
        let unanswered = retry > 0
            && incident.drifted_since_request >= retry
            && report.end - incident.asked_at >= settings.retrain_retry_ms as i64
            && newest_version == incident.asked_version;
        // The answer was rolled back, and production still sees the drift.
        let rolled_back = incident.after_rollbacks < settings.retrain_after_rollbacks
            && incident.drifted_since_request >= retry.max(1)
            && newest_version != incident.asked_version
            && newest_rolled_back_at
                .is_some_and(|at| report.end - at >= settings.retrain_after_rollback_ms as i64);
        if (unanswered || rolled_back) && settings.retrain_on_drift && !canary_in_flight {
            if rolled_back {
                incident.after_rollbacks += 1;
            }
            incident.drifted_since_request = 0;
            incident.asked_at = report.end;
            incident.asked_version = newest_version;
            actions.push(Action::Retrain(drift_retraining(
                settings,
                name,
                &incident.event_id,
                incident.start,
                mlops_events::now_millis(),
            )));
        }
    }
    push_bounded(&mut state.windows, summary, settings.history);
    actions
}

/// The retraining a drift incident asks for: learning from `retrain_lookback_ms` before
/// the incident's first drifted window (`start`) on, naming its drift event.
fn drift_retraining(
    settings: &MonitorSettings,
    model: &str,
    drift_event: &str,
    start: i64,
    at: i64,
) -> TrainingRequest {
    TrainingRequest {
        request_id: mlops_events::new_id(),
        model_name: model.to_owned(),
        reason: TrainingReason::Drift,
        window_start: settings
            .retrain_lookback_ms
            .map(|lookback| start - lookback),
        window_end: None,
        triggering_event_id: Some(drift_event.to_owned()),
        requested_by: "monitoring".to_owned(),
        requested_at: at,
        trace_id: None,
    }
}

/// A closed window of feature rows, kept for the report.
fn record_rows_window(settings: &MonitorSettings, state: &mut VersionState, report: WindowReport) {
    let seconds = ((report.end - report.start) as f64 / 1000.0).max(1.0);
    let mut summary = WindowSummary::of(&report);
    summary.volume = json!({"per_second": report.size as f64 / seconds});
    // Incidents come from what production answers, never from rows.
    summary.incident_closed = false;
    push_bounded(&mut state.row_windows, summary, settings.history);
}

/// The loss of one prediction against its label: 0/1 for classes, squared error for
/// numbers; none when the two cannot be compared.
fn loss(task: &str, prediction: &Pending, label: &LabelValue) -> Option<f64> {
    match (task, label) {
        ("regression", LabelValue::Number(y)) => Some((prediction.output - y).powi(2)),
        ("regression", LabelValue::Class(_)) => None,
        (_, label) => {
            let predicted = prediction.predicted_label.as_deref()?;
            Some(if same_class(predicted, label) {
                0.0
            } else {
                1.0
            })
        }
    }
}

/// Whether a predicted class (`"1"`/`"0"` for binary models, a class name otherwise) is the
/// labelled one (a number, a boolean's text or a class name).
fn same_class(predicted: &str, label: &LabelValue) -> bool {
    let truthy = |s: &str| matches!(s, "1" | "true" | "True");
    match label {
        LabelValue::Number(y) => truthy(predicted) == (*y >= 0.5),
        LabelValue::Class(c) if matches!(c.as_str(), "true" | "false" | "True" | "False") => {
            truthy(predicted) == truthy(c)
        }
        LabelValue::Class(c) => predicted == c,
    }
}

fn performance(
    task: &str,
    scored: Vec<(LabelValue, f64, Option<String>, i64, i64)>,
) -> PerformanceSummary {
    let start = scored.iter().map(|s| s.4).min().unwrap_or(0);
    let end = scored.iter().map(|s| s.4).max().unwrap_or(0);
    let lags = lag_summary(scored.iter().map(|s| s.3 as f64));
    let metrics = match task {
        "regression" => {
            let (truth, predicted): (Vec<f64>, Vec<f64>) = scored
                .iter()
                .filter_map(|(l, o, ..)| match l {
                    LabelValue::Number(y) => Some((*y, *o)),
                    LabelValue::Class(_) => None,
                })
                .unzip();
            mlops_ml::metrics::regression(&truth, &predicted)
        }
        "binary_classification" => {
            let truth: Vec<bool> = scored.iter().map(|(l, ..)| same_class("1", l)).collect();
            let scores: Vec<f64> = scored.iter().map(|s| s.1).collect();
            mlops_ml::metrics::binary(&truth, &scores)
        }
        _ => {
            let correct = scored
                .iter()
                .filter(|(l, _, p, ..)| p.as_deref().is_some_and(|p| same_class(p, l)))
                .count();
            BTreeMap::from([(
                "accuracy".to_owned(),
                correct as f64 / scored.len().max(1) as f64,
            )])
        }
    };
    PerformanceSummary {
        start,
        end,
        labels: scored.len(),
        metrics,
        label_lag_seconds: lags,
    }
}

/// Count, p50, p90 and max of label delays given in milliseconds, in seconds.
fn lag_summary(lags_ms: impl Iterator<Item = f64>) -> Json {
    let mut sorted: Vec<f64> = lags_ms.map(|l| l / 1000.0).collect();
    if sorted.is_empty() {
        return json!({"count": 0});
    }
    sorted.sort_by(f64::total_cmp);
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    json!({"count": sorted.len(), "p50": at(0.5), "p90": at(0.9), "max": at(1.0)})
}

#[cfg(test)]
mod tests {
    use polars::prelude::*;

    use super::*;

    fn info() -> Arc<VersionInfo> {
        let amount: Vec<f64> = (0..5_000).map(|i| f64::from(i % 100)).collect();
        Arc::new(VersionInfo {
            task: "binary_classification".into(),
            view: "v".into(),
            snapshot_id: "s".into(),
            reference: BTreeMap::from([(
                "amount".to_owned(),
                mlops_ml::reference_statistics(&Column::new("amount".into(), amount)).unwrap(),
            )]),
        })
    }

    fn lifecycle(
        version: i32,
        stage: ModelStage,
        percent: Option<f64>,
        at: i64,
    ) -> ModelLifecycleEvent {
        ModelLifecycleEvent {
            event_id: mlops_events::new_id(),
            sequence: 0,
            model_name: "m".into(),
            version,
            stage,
            previous_stage: None,
            canary_percent: percent,
            artifact_uri: String::new(),
            artifact_sha256: String::new(),
            signature: None,
            metrics: HashMap::new(),
            lineage: Default::default(),
            reason: String::new(),
            actor: String::new(),
            triggering_event_id: None,
            occurred_at: at,
            trace_id: None,
        }
    }

    fn prediction(
        i: usize,
        version: i32,
        role: ServingRole,
        amount: f64,
        at: i64,
    ) -> PredictionLog {
        PredictionLog {
            request_id: format!("r{i}"),
            entity_id: Some(format!("e{}", i % 50)),
            model_name: "m".into(),
            model_version: version,
            role,
            features: HashMap::from([("amount".to_owned(), amount)]),
            output: if amount >= 50.0 { 0.9 } else { 0.1 },
            predicted_label: Some(if amount >= 50.0 { "1" } else { "0" }.into()),
            latency_us: 300,
            predicted_at: at,
            trace_id: None,
            error: None,
        }
    }

    fn label(i: usize, truth: bool, at: i64) -> GroundTruthLabel {
        GroundTruthLabel {
            label_id: format!("l{i}"),
            dataset: "d".into(),
            entity_id: format!("e{}", i % 50),
            request_id: Some(format!("r{i}")),
            label: LabelValue::Number(if truth { 1.0 } else { 0.0 }),
            event_time: at,
            received_at: at + 2_000,
            trace_id: None,
        }
    }

    fn monitor() -> Monitor {
        let mut monitor = Monitor::new(MonitorSettings {
            window_size: 200,
            retrain_retry_ms: 500,
            performance_window: 100,
            canary: CanarySettings {
                min_requests: 50,
                min_labels: 30,
                min_seconds: 5,
                ..CanarySettings::default()
            },
            ..MonitorSettings::default()
        });
        monitor.lifecycle(&lifecycle(1, ModelStage::Production, None, 0));
        monitor.set_info("m", 1, info());
        monitor
    }

    #[test]
    fn a_shift_in_production_traffic_publishes_one_drift_event_and_one_retraining_request() {
        let mut monitor = monitor();
        let mut actions = Vec::new();
        for i in 0..2_000 {
            let amount = if i < 600 {
                (i % 100) as f64
            } else {
                80.0 + (i % 100) as f64
            };
            actions.extend(monitor.prediction(&prediction(
                i,
                1,
                ServingRole::Production,
                amount,
                i as i64,
            )));
        }
        // One incident; the retraining is asked again once, after five more drifted windows
        // with no candidate in canary (the shift lasts seven windows in all).
        assert_eq!(actions.len(), 2, "{actions:?}");
        let Action::Drift(event, Some(request)) = &actions[0] else {
            panic!("{actions:?}");
        };
        assert_eq!(event.window_start, 600, "the first shifted window");
        assert_eq!(request.reason, TrainingReason::Drift);
        assert_eq!(request.triggering_event_id.as_ref(), Some(&event.event_id));
        let Action::Retrain(again) = &actions[1] else {
            panic!("{actions:?}");
        };
        assert_eq!(again.triggering_event_id.as_ref(), Some(&event.event_id));
        assert_ne!(again.request_id, request.request_id);
        let report = monitor.report("m").unwrap();
        let windows = report["versions"][0]["windows"].as_array().unwrap();
        assert_eq!(windows.len(), 10);
        assert!(
            windows[3]["quality"]["amount"]["out_of_range_rate"]
                .as_f64()
                .unwrap()
                > 0.5
        );
        // The model answers 0.9 far more often once amounts grew: prediction drift.
        assert!(windows[5]["prediction_drift"]["value"].as_f64().unwrap() > 0.3);
    }

    #[test]
    fn a_rolled_back_answer_to_a_lasting_drift_is_retrained_again_a_bounded_number_of_times() {
        let mut monitor = Monitor::new(MonitorSettings {
            window_size: 200,
            retrain_retry_windows: 2,
            retrain_retry_ms: 500,
            retrain_after_rollbacks: 2,
            retrain_after_rollback_ms: 1_000,
            ..MonitorSettings::default()
        });
        monitor.lifecycle(&lifecycle(1, ModelStage::Production, None, 0));
        monitor.set_info("m", 1, info());
        // Traffic of version 1 in production from `from` to `to` (one prediction per ms),
        // shifted from the 600th on: the retraining requests it leads to.
        let asks = |monitor: &mut Monitor, from: usize, to: usize| -> Vec<i64> {
            let mut at = Vec::new();
            for i in from..to {
                let amount = (i % 100) as f64 + if i < 600 { 0.0 } else { 80.0 };
                let p = prediction(i, 1, ServingRole::Production, amount, i as i64);
                for action in monitor.prediction(&p) {
                    match action {
                        Action::Drift(_, Some(_)) | Action::Retrain(_) => at.push(i as i64),
                        _ => {}
                    }
                }
            }
            at
        };
        assert_eq!(asks(&mut monitor, 0, 1_000), [799], "the drift asks once");
        // Its answer, version 2, is rolled back at 1,000: while the drift lasts, it is asked
        // again after two more drifted windows and a second since the rollback (the window
        // that ends at 1,999 is a millisecond short of it).
        monitor.lifecycle(&lifecycle(2, ModelStage::Canary, Some(10.0), 900));
        monitor.lifecycle(&lifecycle(2, ModelStage::Archived, None, 1_000));
        assert_eq!(asks(&mut monitor, 1_000, 2_400), [2_199]);
        // Version 3 is rolled back too: asked a second time, then no more.
        monitor.lifecycle(&lifecycle(3, ModelStage::Canary, Some(10.0), 2_400));
        monitor.lifecycle(&lifecycle(3, ModelStage::Archived, None, 2_500));
        assert_eq!(asks(&mut monitor, 2_400, 4_000), [3_599]);
        monitor.lifecycle(&lifecycle(4, ModelStage::Canary, Some(10.0), 4_000));
        monitor.lifecycle(&lifecycle(4, ModelStage::Archived, None, 4_100));
        assert_eq!(asks(&mut monitor, 4_000, 8_000), [] as [i64; 0]);
    }

    #[test]
    fn feature_rows_of_the_production_versions_view_are_watched_too() {
        let mut monitor = monitor();
        for i in 0..400 {
            let row = HashMap::from([("amount".to_owned(), 80.0 + (i % 100) as f64)]);
            monitor.feature_row("v", &row, i);
            monitor.feature_row("another_view", &row, i);
        }
        let report = monitor.report("m").unwrap();
        let version = &report["versions"][0];
        assert_eq!(version["feature_rows"], 400);
        let windows = version["feature_row_windows"].as_array().unwrap();
        assert_eq!(windows.len(), 2);
        assert!(
            windows[0]["statistics"]
                .as_array()
                .unwrap()
                .iter()
                .any(|s| s["statistic"] == "psi" && s["drifted"] == true),
            "{windows:?}"
        );
        // Rows are reported, not acted on: incidents come from what production answers.
        assert_eq!(report["drift_events"].as_array().map(Vec::len), Some(0));
        assert!(monitor.watches("v") && !monitor.watches("another_view"));
        assert_eq!(monitor.wanted_info(), []);
        monitor.lifecycle(&lifecycle(2, ModelStage::Canary, Some(10.0), 0));
        assert_eq!(monitor.wanted_info(), [("m".to_owned(), 2)]);
    }

    #[test]
    fn a_label_naming_a_request_not_seen_grades_no_other_request() {
        let mut monitor = monitor();
        // Request 0 of entity e0 was answered "1" (amount 80).
        monitor.prediction(&prediction(0, 1, ServingRole::Production, 80.0, 0));
        let labels = |m: &Monitor| m.report("m").unwrap()["versions"][0]["labels"].clone();
        // The label of request 50 (same entity, its prediction not seen yet) is not
        // taken for request 0's.
        monitor.label(&label(50, false, 10));
        assert_eq!(labels(&monitor), 0);
        // Request 0's own label joins it.
        monitor.label(&label(0, true, 10));
        assert_eq!(labels(&monitor), 1);
        let waiting = |m: &Monitor, field: &str| m.report("m").unwrap()[field].clone();
        assert_eq!(waiting(&monitor, "labels_awaiting_prediction"), 1);
        // Request 50's prediction arrives after its label: the held label grades it.
        monitor.prediction(&prediction(50, 1, ServingRole::Production, 20.0, 12));
        assert_eq!(labels(&monitor), 2);
        assert_eq!(waiting(&monitor, "labels_awaiting_prediction"), 0);
        assert_eq!(waiting(&monitor, "predictions_awaiting_label"), 0);
        // A label naming no request grades the entity's latest prediction still waiting.
        monitor.prediction(&prediction(100, 1, ServingRole::Production, 80.0, 20));
        monitor.label(&GroundTruthLabel {
            request_id: None,
            ..label(100, true, 30)
        });
        assert_eq!(labels(&monitor), 3);
        assert_eq!(monitor.models["m"].by_request.len(), 0);
    }

    /// A shadow (a canary at 0 %) answers the same requests as production: each label
    /// grades both answers, whichever of the three records comes first, so the shadow is
    /// compared with production on the same requests. A copy of a record read twice (an
    /// at-least-once consumer after a rebalance) counts once.
    #[test]
    fn a_label_grades_production_and_its_shadow_and_copies_count_once() {
        let mut monitor = monitor();
        monitor.lifecycle(&lifecycle(2, ModelStage::Canary, Some(0.0), 0));
        monitor.set_info("m", 2, info());
        let version = |m: &Monitor, v: usize, field: &str| {
            m.report("m").unwrap()["versions"][v][field]
                .as_u64()
                .unwrap()
        };
        for i in 0..60 {
            let production = prediction(i, 1, ServingRole::Production, 80.0, 100);
            let shadow = prediction(i, 2, ServingRole::Shadow, 80.0, 100);
            let label = label(i, true, 200);
            // Every order the two topics can deliver them in.
            match i % 3 {
                0 => {
                    monitor.prediction(&production);
                    monitor.prediction(&shadow);
                    monitor.label(&label);
                }
                1 => {
                    monitor.prediction(&production);
                    monitor.label(&label);
                    monitor.prediction(&shadow);
                }
                _ => {
                    monitor.label(&label);
                    monitor.prediction(&shadow);
                    monitor.prediction(&production);
                }
            }
            // Read again: each record once more.
            monitor.prediction(&production);
            monitor.prediction(&shadow);
            monitor.label(&label);
        }
        // A request the shadow failed, and its copy: one failure.
        let failed = PredictionLog {
            error: Some("non-finite output".into()),
            ..prediction(60, 2, ServingRole::Shadow, 80.0, 100)
        };
        monitor.prediction(&failed);
        monitor.prediction(&failed);
        assert_eq!(version(&monitor, 1, "failed_requests"), 1);
        for v in [0, 1] {
            assert_eq!(version(&monitor, v, "predictions"), 60, "version {}", v + 1);
            assert_eq!(version(&monitor, v, "labels"), 60, "version {}", v + 1);
        }
        let report = monitor.report("m").unwrap();
        assert_eq!(report["predictions_awaiting_label"], 0, "{report}");
        assert_eq!(report["labels_awaiting_prediction"], 0, "{report}");
        assert_eq!(report["labels_repeated"], 60, "{report}");
        // Both arms of the comparison were scored on the same 60 requests.
        let evidence = &report["canary"]["evidence"];
        assert_eq!(evidence["canary_labels"].as_f64(), Some(60.0), "{evidence}");
        assert_eq!(
            evidence["production_labels"].as_f64(),
            Some(60.0),
            "{evidence}"
        );
    }

    /// A copy of an answer read again after a label joined it (and it stopped waiting) —
    /// a rebalance re-reads the prediction log from the last commit — is not counted for
    /// its version again, nor waits for a label a second time.
    #[test]
    fn a_copy_of_an_answer_read_after_its_label_joined_it_counts_once() {
        let mut monitor = monitor();
        let predictions = |m: &Monitor| {
            m.report("m").unwrap()["versions"][0]["predictions"]
                .as_u64()
                .unwrap()
        };
        let waiting = |m: &Monitor, field: &str| m.report("m").unwrap()[field].clone();
        let answer = prediction(7, 1, ServingRole::Production, 80.0, 100);
        monitor.prediction(&answer);
        // Joined by its entity (the label names no request): the answer stops waiting.
        monitor.label(&GroundTruthLabel {
            request_id: None,
            ..label(7, true, 200)
        });
        assert_eq!(waiting(&monitor, "predictions_awaiting_label"), 0);
        monitor.prediction(&answer);
        assert_eq!(predictions(&monitor), 1);
        assert_eq!(waiting(&monitor, "predictions_awaiting_label"), 0);
        // So the entity's next label has no answer of it to grade a second time.
        monitor.label(&GroundTruthLabel {
            request_id: None,
            label_id: "l7-again".into(),
            ..label(7, false, 300)
        });
        assert_eq!(
            monitor.report("m").unwrap()["versions"][0]["labels"],
            1,
            "graded once"
        );
    }

    #[test]
    fn predictions_awaiting_labels_are_bounded_and_the_oldest_go_first() {
        let mut monitor = Monitor::new(MonitorSettings {
            pending_labels: 100,
            performance_window: 1_000,
            ..MonitorSettings::default()
        });
        monitor.lifecycle(&lifecycle(1, ModelStage::Production, None, 0));
        monitor.set_info("m", 1, info());
        for i in 0..1_000 {
            monitor.prediction(&prediction(i, 1, ServingRole::Production, 10.0, i as i64));
            // Every other prediction is labelled at once: joined ones make room.
            if i % 2 == 0 && i >= 500 {
                monitor.label(&label(i, false, i as i64));
            }
        }
        let labels = |m: &Monitor| m.report("m").unwrap()["versions"][0]["labels"].clone();
        assert_eq!(labels(&monitor), 250);
        // The 100 most recent unlabelled ones are still waiting; older ones were evicted.
        for i in (0..1_000).filter(|i| i % 2 == 1) {
            monitor.label(&label(i, false, i as i64));
        }
        assert_eq!(labels(&monitor), 350);
        let model = &monitor.models["m"];
        assert_eq!(model.by_request.len(), 0);
        assert!(
            model.by_request.order.len() <= 200,
            "{}",
            model.by_request.order.len()
        );
        // Labels are kept for answers still to come — here the 400 of evicted predictions,
        // which will not — bounded the same way, the newest kept.
        assert_eq!(monitor.labels.len(), 100);
        assert!(monitor.labels.by_id.contains_key("r999"));
        assert!(!monitor.labels.by_id.contains_key("r799"));
        assert!(monitor.labels.order.len() <= 200);
        let report = monitor.report("m").unwrap();
        assert_eq!(
            report["labels_awaiting_prediction"], 0,
            "r801..r999 were graded"
        );
    }

    #[test]
    fn delayed_labels_are_joined_and_scored_per_window() {
        let mut monitor = monitor();
        for i in 0..300 {
            monitor.prediction(&prediction(
                i,
                1,
                ServingRole::Production,
                (i % 100) as f64,
                i as i64,
            ));
        }
        // Labels arrive later, out of order; a quarter of them disagree with the model.
        for i in (0..200).rev() {
            let truth = ((i % 100) as f64 >= 50.0) != (i % 4 == 0);
            monitor.label(&label(i, truth, i as i64));
        }
        let report = monitor.report("m").unwrap();
        let performance = report["versions"][0]["performance"].as_array().unwrap();
        assert_eq!(performance.len(), 2);
        for window in performance {
            assert!((window["metrics"]["accuracy"].as_f64().unwrap() - 0.75).abs() < 1e-9);
            assert_eq!(window["label_lag_seconds"]["p50"], 2.0);
        }
        assert_eq!(report["versions"][0]["labels"], 200);
    }

    #[test]
    fn a_canary_worse_on_its_labels_is_rolled_back_and_a_good_one_promoted() {
        for canary_right in [false, true] {
            let mut monitor = monitor();
            let flow = "4bf92f3577b34da6a3ce929d0e0e4736".to_owned();
            monitor.lifecycle(&ModelLifecycleEvent {
                trace_id: Some(flow.clone()),
                ..lifecycle(2, ModelStage::Canary, Some(10.0), 1_000)
            });
            monitor.set_info("m", 2, info());
            let mut decisions = Vec::new();
            for i in 0..1_000 {
                let at = 1_000 + i as i64 * 10;
                let (version, role) = if i % 10 == 0 {
                    (2, ServingRole::Canary)
                } else {
                    (1, ServingRole::Production)
                };
                let amount = (i % 100) as f64;
                monitor.prediction(&prediction(i, version, role, amount, at));
                let right = amount >= 50.0;
                let truth = if version == 2 && !canary_right {
                    !right
                } else {
                    right
                };
                monitor.label(&label(i, truth, at));
                decisions.extend(monitor.tick(at));
            }
            let [Action::Decide(decision)] = decisions.as_slice() else {
                panic!("one decision: {decisions:?}");
            };
            let expected = if canary_right {
                mlops_events::CanaryVerdict::Promote
            } else {
                mlops_events::CanaryVerdict::Rollback
            };
            assert_eq!(decision.decision, expected, "{decision:?}");
            assert_eq!(decision.canary_version, 2);
            assert_eq!(decision.production_version, Some(1));
            assert_eq!(
                decision.trace_id,
                Some(flow),
                "the verdict continues the flow"
            );
        }
    }
}
