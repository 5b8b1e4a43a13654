//! `PredictionLog` written straight to Avro binary, field by field in its schema's order —
//! the serving hot path, which logs every row it answers. The generic path (a serde value
//! tree, resolved against the schema, then written) allocates a map of field names per
//! record; this one writes into a buffer the caller reuses. A test decodes what it writes
//! with the schema and compares it with the event, and compares the bytes with the generic
//! encoder's.

use crate::{PredictionLog, ServingRole};

/// A `PredictionLog` by reference: what a record needs, borrowed from wherever the caller
/// keeps it (serving keeps one request's rows together and writes one record per row).
#[derive(Debug, Clone, Copy)]
pub struct PredictionLogRef<'a> {
    pub request_id: &'a str,
    pub entity_id: Option<&'a str>,
    pub model_name: &'a str,
    pub model_version: i32,
    pub role: ServingRole,
    pub features: &'a [(&'a str, f64)],
    pub output: f64,
    pub predicted_label: Option<&'a str>,
    pub latency_us: i64,
    pub predicted_at: i64,
    pub trace_id: Option<&'a str>,
    pub error: Option<&'a str>,
}

impl PredictionLogRef<'_> {
    /// Appends the record's Avro binary encoding (no framing) to `out`.
    pub fn write_avro(&self, out: &mut Vec<u8>) {
        write_string(out, self.request_id);
        write_optional_string(out, self.entity_id);
        write_string(out, self.model_name);
        write_long(out, i64::from(self.model_version));
        write_long(
            out,
            match self.role {
                ServingRole::Production => 0,
                ServingRole::Canary => 1,
                ServingRole::Shadow => 2,
            },
        );
        // A map is written as blocks of entries, ended by an empty block.
        if !self.features.is_empty() {
            write_long(out, self.features.len() as i64);
            for (name, value) in self.features {
                write_string(out, name);
                out.extend_from_slice(&value.to_le_bytes());
            }
        }
        write_long(out, 0);
        out.extend_from_slice(&self.output.to_le_bytes());
        write_optional_string(out, self.predicted_label);
        write_long(out, self.latency_us);
        write_long(out, self.predicted_at);
        write_optional_string(out, self.trace_id);
        write_optional_string(out, self.error);
    }
}

impl PredictionLog {
    /// Appends the Avro binary encoding of `self` to `out` (see [`PredictionLogRef`]).
    pub fn write_avro(&self, out: &mut Vec<u8>) {
        let features: Vec<(&str, f64)> = self
            .features
            .iter()
            .map(|(name, value)| (name.as_str(), *value))
            .collect();
        PredictionLogRef {
            request_id: &self.request_id,
            entity_id: self.entity_id.as_deref(),
            model_name: &self.model_name,
            model_version: self.model_version,
            role: self.role,
            features: &features,
            output: self.output,
            predicted_label: self.predicted_label.as_deref(),
            latency_us: self.latency_us,
            predicted_at: self.predicted_at,
            trace_id: self.trace_id.as_deref(),
            error: self.error.as_deref(),
        }
        .write_avro(out);
    }
}

/// A long (and an int): zig-zag, then variable-length base 128, low groups first.
fn write_long(out: &mut Vec<u8>, value: i64) {
    let mut n = ((value << 1) ^ (value >> 63)) as u64;
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn write_string(out: &mut Vec<u8>, text: &str) {
    write_long(out, text.len() as i64);
    out.extend_from_slice(text.as_bytes());
}

/// A `["null", "string"]` union: the branch index, then the value.
fn write_optional_string(out: &mut Vec<u8>, text: Option<&str>) {
    match text {
        None => write_long(out, 0),
        Some(text) => {
            write_long(out, 1);
            write_string(out, text);
        }
    }
}
