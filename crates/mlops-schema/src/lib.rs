//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//! binary) through a Confluent-compatible Schema Registry.
//!
//! Encoding registers the event's schema from `schemas/` under `<topic>-value` on first
//! use (TopicNameStrategy) and caches the id; decoding checks the frame before reading it
//! and caches schemas by id. Errors say whether retrying can help: a record that can never
//! decode is [`Error::Poison`] (dead-letter it), an unreachable registry is
//! [`Error::Unavailable`] (retry, never drop).

pub mod json;

use std::time::Duration;

use apache_avro::types::Value;
use mlops_events::{Event, topics};
use schema_registry_converter::{
    async_impl::{
        avro::{AvroDecoder, AvroEncoder},
        schema_registry::SrSettings,
    },
    error::SRCError,
    schema_registry_common::{SchemaType, SubjectNameStrategy, SuppliedSchema},
};

/// Size of the Confluent header: magic byte plus schema id.
pub const HEADER_LEN: usize = 5;
const MAGIC_BYTE: u8 = 0;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The record can never be decoded or encoded as asked; retrying will not help.
    #[error("{reason}")]
    Poison { reason: String },
    /// The registry could not be reached or answered with a server error; retry.
    #[error("schema registry unavailable: {reason}")]
    Unavailable { reason: String },
}

impl Error {
    pub fn is_poison(&self) -> bool {
        matches!(self, Error::Poison { .. })
    }

    fn poison(reason: impl Into<String>) -> Self {
        Error::Poison {
            reason: reason.into(),
        }
    }
}

impl From<SRCError> for Error {
    fn from(e: SRCError) -> Self {
        let reason = match &e.cause {
            Some(cause) => format!("{}: {cause}", e.error),
            None => e.error.clone(),
        };
        if e.retriable {
            Error::Unavailable { reason }
        } else {
            Error::Poison { reason }
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Splits a Confluent-framed record into its schema id and Avro body, checking the frame
/// first so that short or foreign bytes give a precise reason instead of a panic.
pub fn split_frame(bytes: &[u8]) -> Result<(u32, &[u8])> {
    if bytes.len() < HEADER_LEN {
        return Err(Error::poison(format!(
            "record of {} bytes is shorter than the 5-byte Confluent header",
            bytes.len()
        )));
    }
    if bytes[0] != MAGIC_BYTE {
        return Err(Error::poison(format!(
            "unknown magic byte 0x{:02x}: not Confluent-framed Avro",
            bytes[0]
        )));
    }
    let id = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]);
    Ok((id, &bytes[HEADER_LEN..]))
}

/// Frames an Avro body the Confluent way: magic byte, big-endian schema id, body.
pub fn frame(schema_id: u32, body: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(HEADER_LEN + body.len());
    framed.push(MAGIC_BYTE);
    framed.extend_from_slice(&schema_id.to_be_bytes());
    framed.extend_from_slice(body);
    framed
}

/// A decoded record whose type is only known at run time (user datasets).
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRecord {
    pub schema_id: u32,
    /// Fully qualified record name of the writer's schema.
    pub name: Option<String>,
    pub value: Value,
}

/// Avro codec bound to one Schema Registry. Cheap to share behind an `Arc`; caches are
/// internal and concurrent.
pub struct AvroCodec {
    encoder: AvroEncoder,
    decoder: AvroDecoder,
    registry_url: String,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec")
            .field("registry_url", &self.registry_url)
            .finish_non_exhaustive()
    }
}

impl AvroCodec {
    pub fn new(registry_url: &str) -> Result<Self> {
        let settings = || {
            SrSettings::new_builder(registry_url.trim_end_matches('/').to_owned())
                .set_timeout(Duration::from_secs(10))
                .build()
                .map_err(Error::from)
        };
        Ok(Self {
            encoder: AvroEncoder::new(settings()?),
            decoder: AvroDecoder::new(settings()?),
            registry_url: registry_url.to_owned(),
        })
    }

    pub fn registry_url(&self) -> &str {
        &self.registry_url
    }

    /// Encodes `event` for `topic`, registering its schema under `<topic>-value` on first use.
    pub async fn encode<E: Event>(&self, topic: &str, event: &E) -> Result<Vec<u8>> {
        let strategy = SubjectNameStrategy::TopicNameStrategyWithSchema(
            topic.to_owned(),
            false,
            supplied_schema(E::FULL_NAME, E::SCHEMA),
        );
        Ok(self.encoder.encode_struct(event, &strategy).await?)
    }

    /// Decodes a record of any registered schema.
    pub async fn decode_record(&self, bytes: &[u8]) -> Result<DecodedRecord> {
        let (schema_id, _) = split_frame(bytes)?;
        let decoded = self.decoder.decode(Some(bytes)).await.map_err(|e| {
            let e = Error::from(e);
            match e {
                Error::Poison { reason } => {
                    Error::poison(format!("schema id {schema_id}: {reason}"))
                }
                other => other,
            }
        })?;
        Ok(DecodedRecord {
            schema_id,
            name: decoded.name.map(|n| n.fullname(None)),
            value: decoded.value,
        })
    }

    /// Decodes a record that must be of type `E`; a record written with another record
    /// type (wrong subject) is poison, not a silent mis-read.
    pub async fn decode<E: Event>(&self, bytes: &[u8]) -> Result<E> {
        let record = self.decode_record(bytes).await?;
        match record.name.as_deref() {
            Some(name) if name == E::FULL_NAME => {}
            other => {
                return Err(Error::poison(format!(
                    "schema id {} is {}, expected {}",
                    record.schema_id,
                    other.unwrap_or("not a named record"),
                    E::FULL_NAME
                )));
            }
        }
        apache_avro::from_value(&record.value).map_err(|e| {
            Error::poison(format!(
                "schema id {} does not map onto {}: {e}",
                record.schema_id,
                E::FULL_NAME
            ))
        })
    }
}

fn supplied_schema(name: &str, schema: &str) -> SuppliedSchema {
    SuppliedSchema::new(Some(name.to_owned()), SchemaType::Avro, schema.to_owned())
}

/// The subject an event type is registered under for a topic.
pub fn subject_for(topic: &str) -> String {
    topics::value_subject(topic)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_check_rejects_short_and_foreign_bytes() {
        let short = split_frame(&[0, 0, 1]).unwrap_err();
        assert!(short.is_poison());
        assert_eq!(
            short.to_string(),
            "record of 3 bytes is shorter than the 5-byte Confluent header"
        );
        let json = split_frame(b"{\"a\":1}").unwrap_err();
        assert_eq!(
            json.to_string(),
            "unknown magic byte 0x7b: not Confluent-framed Avro"
        );
        let (id, body) = split_frame(&[0, 0, 0, 1, 2, 42]).unwrap();
        assert_eq!(id, 258);
        assert_eq!(body, &[42]);
        assert_eq!(frame(258, &[42]), [0, 0, 0, 1, 2, 42]);
    }
}
