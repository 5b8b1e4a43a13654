//! What the feature store, training and serving share about a model's inputs: the fitted
//! transforms (impute, scale, encode) with their learnt state, applied as polars
//! expressions over a frame and row by row over one request, with the same values; the
//! reference statistics a snapshot records as the drift baseline; the snapshot manifest
//! that carries both; and the signed model artifact.

pub mod artifact;
pub mod drift;
pub mod input_plan;
pub mod kolmogorov;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod registry;
pub mod statistics;
pub mod transforms;

use polars::prelude::*;
use serde_json::Value as Json;

pub use artifact::{ArtifactError, ModelArtifact, Signer};
pub use input_plan::InputPlan;
pub use manifest::{Manifest, RAW_PREFIX, TimeRange};
pub use statistics::{ReferenceStatistics, reference_statistics};
pub use transforms::{
    Encode, EncodeState, FittedState, FittedTransforms, Impute, ImputeState, Scale, ScaleState,
    apply, apply_row, fit,
};

/// JSON of one polars value (NaN and infinities become null: JSON has no place for them).
pub fn json_of(value: &AnyValue<'_>) -> Json {
    match value {
        AnyValue::Null => Json::Null,
        AnyValue::Boolean(b) => Json::Bool(*b),
        AnyValue::Int8(n) => Json::from(*n),
        AnyValue::Int16(n) => Json::from(*n),
        AnyValue::Int32(n) => Json::from(*n),
        AnyValue::Int64(n) => Json::from(*n),
        AnyValue::UInt8(n) => Json::from(*n),
        AnyValue::UInt16(n) => Json::from(*n),
        AnyValue::UInt32(n) => Json::from(*n),
        AnyValue::UInt64(n) => Json::from(*n),
        AnyValue::Float32(x) => {
            serde_json::Number::from_f64(f64::from(*x)).map_or(Json::Null, Json::Number)
        }
        AnyValue::Float64(x) => serde_json::Number::from_f64(*x).map_or(Json::Null, Json::Number),
        AnyValue::String(s) => Json::String((*s).to_owned()),
        AnyValue::StringOwned(s) => Json::String(s.to_string()),
        other => Json::String(other.to_string()),
    }
}

/// A JSON value as a polars literal: integers stay integers (a fill keeps an integer column
/// integral), other numbers are floats. The one conversion of the stream's `fill` and the
/// snapshots' fitted imputation.
pub fn json_literal(value: &Json) -> Expr {
    match value {
        Json::Bool(b) => lit(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => lit(i),
            None => lit(n.as_f64().unwrap_or(f64::NAN)),
        },
        Json::String(s) => lit(s.clone()),
        _ => lit(NULL),
    }
}
