//! Avro in the Confluent wire format (magic byte 0, 4-byte big-endian schema id, Avro
//! binary) through a Confluent-compatible Schema Registry.
//!
//! Encoding registers the event's schema from `schemas/` under `<topic>-value` on first
//! use (TopicNameStrategy) and caches the id; decoding checks the frame before reading it
//! and caches schemas by id. Errors say whether retrying can help: a record that can never
//! decode is [`Error::Poison`] (dead-letter it), an unreachable registry is
//! [`Error::Unavailable`] (retry, never drop).

pub mod json;
pub mod registry;

use std::{collections::HashMap, sync::Arc, time::Duration};

use apache_avro::{Schema, types::Value};
use mlops_events::{Event, topics};
use tokio::sync::RwLock;

pub use registry::{Registered, RegistryError, SchemaRegistry, Usage};

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

impl From<RegistryError> for Error {
    fn from(e: RegistryError) -> Self {
        match e {
            RegistryError::Unavailable(reason) => Error::Unavailable { reason },
            other => Error::poison(other.to_string()),
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
    write_frame_header(&mut framed, schema_id);
    framed.extend_from_slice(body);
    framed
}

/// Appends the Confluent header (magic byte, big-endian schema id) that precedes a body.
pub fn write_frame_header(out: &mut Vec<u8>, schema_id: u32) {
    out.push(MAGIC_BYTE);
    out.extend_from_slice(&schema_id.to_be_bytes());
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
/// internal and concurrent. Only answers are cached: a registry that was unreachable is
/// asked again next time.
pub struct AvroCodec {
    registry: SchemaRegistry,
    /// Writer schemas by id, parsed.
    by_id: RwLock<HashMap<u32, Arc<Schema>>>,
    /// Ids of our own event schemas, by subject and record name.
    ids: RwLock<HashMap<(String, &'static str), u32>>,
    /// Our own event schemas, parsed, by record name.
    own: RwLock<HashMap<&'static str, Arc<Schema>>>,
}

impl std::fmt::Debug for AvroCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AvroCodec")
            .field("registry_url", &self.registry.url())
            .finish_non_exhaustive()
    }
}

/// Per-request timeout and attempts of [`AvroCodec::new`].
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_ATTEMPTS: u32 = 3;

impl AvroCodec {
    /// A codec on the registry at `registry_url`, with the default timeout and retries.
    pub fn new(registry_url: &str) -> Result<Self> {
        Ok(Self::with_registry(SchemaRegistry::new(
            registry_url,
            DEFAULT_TIMEOUT,
            DEFAULT_ATTEMPTS,
        )?))
    }

    pub fn with_registry(registry: SchemaRegistry) -> Self {
        limit_allocations();
        Self {
            registry,
            by_id: RwLock::default(),
            ids: RwLock::default(),
            own: RwLock::default(),
        }
    }

    pub fn registry(&self) -> &SchemaRegistry {
        &self.registry
    }

    pub fn registry_url(&self) -> &str {
        self.registry.url()
    }

    /// Encodes `event` for `topic`, registering its schema under `<topic>-value` on first use.
    pub async fn encode<E: Event>(&self, topic: &str, event: &E) -> Result<Vec<u8>> {
        let schema = self.own_schema::<E>().await?;
        let id = self.schema_id::<E>(topic).await?;
        let value = apache_avro::to_value(event)
            .and_then(|value| value.resolve(&schema))
            .map_err(|e| Error::poison(format!("{} does not encode: {e}", E::FULL_NAME)))?;
        let body = apache_avro::writer::datum::GenericDatumWriter::builder(&schema)
            .build()
            .and_then(|writer| writer.write_value_to_vec(value))
            .map_err(|e| Error::poison(format!("{} does not encode: {e}", E::FULL_NAME)))?;
        Ok(frame(id, &body))
    }

    async fn own_schema<E: Event>(&self) -> Result<Arc<Schema>> {
        if let Some(schema) = self.own.read().await.get(E::FULL_NAME) {
            return Ok(schema.clone());
        }
        let schema = Arc::new(Schema::parse_str(E::SCHEMA).map_err(|e| {
            Error::poison(format!(
                "the schema of {} does not parse: {e}",
                E::FULL_NAME
            ))
        })?);
        self.own.write().await.insert(E::FULL_NAME, schema.clone());
        Ok(schema)
    }

    /// The id of `E`'s schema under `<topic>-value`, registered on first use (for callers
    /// that write the body themselves, see [`write_frame_header`]).
    pub async fn schema_id<E: Event>(&self, topic: &str) -> Result<u32> {
        let key = (topics::value_subject(topic), E::FULL_NAME);
        if let Some(id) = self.ids.read().await.get(&key) {
            return Ok(*id);
        }
        let id = self.registry.register(&key.0, E::SCHEMA).await?;
        self.ids.write().await.insert(key, id);
        Ok(id)
    }

    /// The writer schema of `id`, fetched once.
    async fn writer_schema(&self, id: u32) -> Result<Arc<Schema>> {
        if let Some(schema) = self.by_id.read().await.get(&id) {
            return Ok(schema.clone());
        }
        let text = self.registry.schema(id).await.map_err(|e| match e {
            RegistryError::NotFound(_) => {
                Error::poison(format!("schema id {id} is not registered"))
            }
            other => other.into(),
        })?;
        let schema = Arc::new(
            Schema::parse_str(&text)
                .map_err(|e| Error::poison(format!("schema id {id} does not parse: {e}")))?,
        );
        self.by_id.write().await.insert(id, schema.clone());
        Ok(schema)
    }

    /// Decodes a record of any registered schema.
    pub async fn decode_record(&self, bytes: &[u8]) -> Result<DecodedRecord> {
        let (schema_id, mut body) = split_frame(bytes)?;
        let schema = self.writer_schema(schema_id).await?;
        let value = read_datum(&schema, &mut body)
            .map_err(|e| Error::poison(format!("schema id {schema_id}: does not decode: {e}")))?;
        let name = match schema.as_ref() {
            Schema::Record(record) => Some(record.name.fullname(None)),
            _ => None,
        };
        Ok(DecodedRecord {
            schema_id,
            name,
            value,
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

/// The largest single allocation a record being decoded may ask for (a string, bytes or
/// a collection's declared length). A Kafka record is at most a few megabytes; without
/// this, a hostile length field could make the reader reserve the library's default of
/// 512 MiB for each poison record before finding it short.
pub const MAX_DECODE_ALLOCATION: usize = 64 * 1024 * 1024;

/// Applies [`MAX_DECODE_ALLOCATION`]: a process-wide setting of the Avro library, fixed at
/// its first use, so it is made when the first codec is (every service's other Avro
/// readers, such as the feature pipeline's, come after).
fn limit_allocations() {
    static LIMIT: std::sync::Once = std::sync::Once::new();
    LIMIT.call_once(|| {
        apache_avro::util::max_allocation_bytes(MAX_DECODE_ALLOCATION);
    });
}

/// Reads one Avro datum of `schema` from `body`.
fn read_datum(schema: &Schema, body: &mut &[u8]) -> Result<Value, apache_avro::Error> {
    limit_allocations();
    apache_avro::reader::datum::GenericDatumReader::builder(schema)
        .build()
        .and_then(|reader| reader.read_value(body))
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

    /// The platform's event schemas with strings, arrays and maps.
    fn event_schemas() -> Vec<Schema> {
        use mlops_events::Event as _;
        [
            mlops_events::PredictionLog::SCHEMA,
            mlops_events::DriftEvent::SCHEMA,
            mlops_events::ModelLifecycleEvent::SCHEMA,
            mlops_events::DeadLetter::SCHEMA,
        ]
        .iter()
        .map(|text| Schema::parse_str(text).unwrap())
        .collect()
    }

    #[test]
    fn a_length_beyond_the_record_is_refused_without_reserving_it() {
        // A string whose length says 1 GiB (zig-zag varint), in a record of a few bytes.
        let mut body: &[u8] = &[0x80, 0x80, 0x80, 0x80, 0x08, b'a'];
        let schema = Schema::parse_str(r#"{"type": "string"}"#).unwrap();
        let refused = read_datum(&schema, &mut body).unwrap_err();
        assert!(
            refused.to_string().contains("allocat") || refused.to_string().contains("1073741824"),
            "{refused}"
        );
    }

    proptest::proptest! {
        /// Any bytes in a frame's body, read as any event of the platform: a value or an
        /// error, never a panic.
        #[test]
        fn any_body_decodes_or_is_refused(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            for schema in event_schemas() {
                let mut rest: &[u8] = &body;
                let _ = read_datum(&schema, &mut rest);
            }
        }

        /// Any bytes from a topic: a frame, or a poison error; never a panic.
        #[test]
        fn any_bytes_are_a_frame_or_poison(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64)) {
            match split_frame(&bytes) {
                Ok((id, body)) => {
                    proptest::prop_assert_eq!(bytes[0], 0);
                    proptest::prop_assert_eq!(frame(id, body), bytes);
                }
                Err(e) => proptest::prop_assert!(e.is_poison()),
            }
        }
    }
}
