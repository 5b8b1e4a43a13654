//! Typed events of the platform and the names of the topics that carry them.
//!
//! The Avro files in `schemas/` are the source of truth: every type here embeds its
//! `.avsc` file and a test checks that the type encodes to, and decodes from, exactly
//! that schema. Nothing in this crate does I/O.

pub mod audit;
mod events;
mod prediction_avro;
pub mod topics;

pub use events::*;
pub use prediction_avro::PredictionLogRef;

use serde::{Serialize, de::DeserializeOwned};

/// Columns every row on a `features.<view>` topic carries besides its features: the
/// feature service writes them, readers (the monitor) tell them from features, and a view
/// may not name a feature after one.
pub const FEATURE_ROW_METADATA: [&str; 6] = [
    "entity_id",
    "event_time",
    "view_version",
    "source_partition",
    "source_offset",
    "revision",
];

/// An event type carried on the bus, bound to its Avro schema in `schemas/`.
pub trait Event: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The `.avsc` text, verbatim from `schemas/`.
    const SCHEMA: &'static str;
    /// Fully qualified Avro name, e.g. `io.mlops.events.DriftEvent`.
    const FULL_NAME: &'static str;

    /// The parsed schema. Parsing cannot fail for the embedded files: a test parses each.
    fn schema() -> apache_avro::Schema {
        apache_avro::Schema::parse_str(Self::SCHEMA).expect("embedded schema parses")
    }
}

/// Milliseconds since the Unix epoch, the unit of every `timestamp-millis` field.
pub fn now_millis() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A fresh, time-ordered id (UUID v7) for events and records.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}
