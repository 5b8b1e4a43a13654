//! One Rust type per schema file. Field names and order follow the `.avsc` files.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::Event;

macro_rules! event {
    ($ty:ident, $file:literal) => {
        impl Event for $ty {
            const SCHEMA: &'static str = include_str!(concat!("../../../schemas/", $file));
            const FULL_NAME: &'static str = concat!("io.mlops.events.", stringify!($ty));
        }
    };
}

/// Raw bytes that Avro encodes as `bytes`, not as an array of ints.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Bytes(#[serde(with = "apache_avro::serde::bytes")] pub Vec<u8>);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataEvent {
    pub event_id: String,
    pub dataset: String,
    pub entity_id: String,
    pub event_time: i64,
    pub ingested_at: i64,
    pub schema_id: i32,
    pub payload: Bytes,
    pub region: Option<String>,
    pub trace_id: Option<String>,
}
event!(DataEvent, "data_event.avsc");

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub source_topic: String,
    pub source_partition: i32,
    pub source_offset: i64,
    pub consumer_group: Option<String>,
    pub reason: String,
    pub error_class: String,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: HashMap<String, Bytes>,
    pub failed_at: i64,
}
event!(DeadLetter, "dead_letter.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingReason {
    Manual,
    Schedule,
    Drift,
    NewData,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRequest {
    pub request_id: String,
    pub model_name: String,
    pub reason: TrainingReason,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
    pub triggering_event_id: Option<String>,
    pub requested_by: String,
    pub requested_at: i64,
    pub trace_id: Option<String>,
}
event!(TrainingRequest, "training_request.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TrainingRunStatus {
    Succeeded,
    RejectedByGate,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainingRunResult {
    pub run_id: String,
    pub request_ids: Vec<String>,
    pub model_name: String,
    pub status: TrainingRunStatus,
    pub reason: Option<String>,
    pub algorithm: String,
    pub hyperparameters: HashMap<String, String>,
    pub metrics: HashMap<String, f64>,
    pub snapshot_id: Option<String>,
    pub feature_view: Option<String>,
    pub feature_view_version: Option<i32>,
    pub registered_version: Option<i32>,
    pub code_version: String,
    pub started_at: i64,
    pub finished_at: i64,
    pub trace_id: Option<String>,
}
event!(TrainingRunResult, "training_run_result.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ModelStage {
    Candidate,
    Canary,
    Production,
    Archived,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Lineage {
    pub training_run_id: Option<String>,
    pub snapshot_id: Option<String>,
    pub feature_view: Option<String>,
    pub feature_view_version: Option<i32>,
    pub schema_ids: Vec<i32>,
    pub code_version: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelLifecycleEvent {
    pub event_id: String,
    pub sequence: i64,
    pub model_name: String,
    pub version: i32,
    pub stage: ModelStage,
    pub previous_stage: Option<ModelStage>,
    pub canary_percent: Option<f64>,
    pub artifact_uri: String,
    pub artifact_sha256: String,
    pub signature: Option<String>,
    pub metrics: HashMap<String, f64>,
    pub lineage: Lineage,
    pub reason: String,
    pub actor: String,
    pub triggering_event_id: Option<String>,
    pub occurred_at: i64,
    pub trace_id: Option<String>,
}
event!(ModelLifecycleEvent, "model_lifecycle.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServingRole {
    Production,
    Canary,
    Shadow,
}

impl ServingRole {
    /// Its name, as the API, the metrics and the log's JSON spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Production => "production",
            Self::Canary => "canary",
            Self::Shadow => "shadow",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PredictionLog {
    pub request_id: String,
    pub entity_id: Option<String>,
    pub model_name: String,
    pub model_version: i32,
    pub role: ServingRole,
    pub features: HashMap<String, f64>,
    pub output: f64,
    pub predicted_label: Option<String>,
    pub latency_us: i64,
    pub predicted_at: i64,
    pub trace_id: Option<String>,
    /// Why the version could not answer (`output` is NaN then).
    #[serde(default)]
    pub error: Option<String>,
}
event!(PredictionLog, "prediction_log.avsc");

/// A label is a number (regression, 0/1) or a class name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum LabelValue {
    Number(f64),
    Class(String),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruthLabel {
    pub label_id: String,
    pub dataset: String,
    pub entity_id: String,
    pub request_id: Option<String>,
    pub label: LabelValue,
    pub event_time: i64,
    pub received_at: i64,
    pub trace_id: Option<String>,
}
event!(GroundTruthLabel, "ground_truth_label.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftStatistic {
    Psi,
    Ks,
    ChiSquare,
    JensenShannon,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftedFeature {
    pub feature: String,
    pub statistic: DriftStatistic,
    pub value: f64,
    pub threshold: f64,
    pub p_value: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriftSeverity {
    Warning,
    Critical,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DriftEvent {
    pub event_id: String,
    pub model_name: String,
    pub model_version: i32,
    pub window_start: i64,
    pub window_end: i64,
    pub window_size: i64,
    pub features: Vec<DriftedFeature>,
    pub severity: DriftSeverity,
    pub detected_at: i64,
    pub trace_id: Option<String>,
}
event!(DriftEvent, "drift_event.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CanaryVerdict {
    Promote,
    Widen,
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryDecision {
    pub decision_id: String,
    pub model_name: String,
    pub canary_version: i32,
    pub production_version: Option<i32>,
    pub decision: CanaryVerdict,
    pub new_percent: Option<f64>,
    pub evidence: HashMap<String, f64>,
    pub reason: String,
    pub decided_at: i64,
    pub trace_id: Option<String>,
}
event!(CanaryDecision, "canary_decision.avsc");

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditOutcome {
    Success,
    Denied,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub audit_id: String,
    pub actor: String,
    pub role: Option<String>,
    pub action: String,
    pub resource: String,
    pub outcome: AuditOutcome,
    pub reason: Option<String>,
    pub source_ip: Option<String>,
    pub trace_id: Option<String>,
    pub occurred_at: i64,
    pub prev_hash: Option<String>,
    pub hash: String,
}
event!(AuditRecord, "audit_record.avsc");
