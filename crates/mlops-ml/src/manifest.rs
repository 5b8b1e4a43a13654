//! The manifest of a training snapshot, stored next to its data: what a trained model's
//! lineage and its serving transforms are read from.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{FittedState, ReferenceStatistics};

/// The manifest of a snapshot, stored next to its data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// SHA-256 of the request's meaning and the data: same inputs, same id.
    pub id: String,
    pub view: String,
    pub view_version: i32,
    pub label_dataset: String,
    pub rows: usize,
    /// Event-time range of the labels, epoch milliseconds.
    pub time_range: TimeRange,
    /// Model inputs, in order (after encoding).
    pub features: Vec<String>,
    /// Per raw feature: the reference statistics (drift baseline).
    pub statistics: BTreeMap<String, ReferenceStatistics>,
    /// Per raw feature: the fitted transforms and their learnt state.
    pub fitted: BTreeMap<String, FittedState>,
    /// Label statistics.
    pub label: ReferenceStatistics,
    pub data: String,
    pub created_at: i64,
    /// Residency region of the data, when the feature service that built it has one: a
    /// training service of another region refuses the snapshot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimeRange {
    pub start: Option<i64>,
    pub end: Option<i64>,
}

/// Prefix of a snapshot's raw (untransformed) feature columns: `raw.<feature>` holds the
/// value before the snapshot's transforms, so a model trained on another snapshot can be
/// scored on this one through its own fitted transforms.
pub const RAW_PREFIX: &str = "raw.";
