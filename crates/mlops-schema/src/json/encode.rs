//! The fast path of [`JsonToAvro`]: a valid JSON record written straight to Avro's binary
//! encoding, without the intermediate `apache_avro` values (a `String` per field name and
//! string value, a path per field) and without resolving the schema on every call.
//!
//! It takes valid records only. A record it stops on — invalid, or using a type only the
//! value path writes (uuid, decimal, duration) — goes through [`JsonToAvro::convert`],
//! which words every field error; so the rules of conversion live in one place, and what
//! this path writes decodes to the value that path builds (a property test holds them
//! together).

use apache_avro::{
    Schema,
    schema::{RecordSchema, UnionSchema},
    types::Value,
};
use serde_json::Value as Json;

use super::{FieldError, JsonToAvro, date, int, latin1, timestamp};

/// Why the fast path stopped.
enum Stop {
    /// The JSON does not fit the schema here (a union then tries its next branch).
    Invalid,
    /// A type this path does not write: the whole record takes the value path.
    Unsupported,
}

type Written = Result<(), Stop>;

impl JsonToAvro {
    /// Appends the Avro binary encoding of `json` to `out` (after a frame header, say),
    /// or answers every field error and leaves `out` as it was.
    pub fn encode_into(&self, json: &Json, out: &mut Vec<u8>) -> Result<(), Vec<FieldError>> {
        let start = out.len();
        if self.write(&self.schema, json, out).is_ok() {
            return Ok(());
        }
        out.truncate(start);
        let value = self.convert(json)?;
        self.write_value(value, out)
    }

    /// The value path's encoding, for the records the fast path leaves to it.
    fn write_value(&self, value: Value, out: &mut Vec<u8>) -> Result<(), Vec<FieldError>> {
        apache_avro::writer::datum::GenericDatumWriter::builder(&self.schema)
            .build()
            .and_then(|writer| writer.write_value(out, value))
            .map(drop)
            .map_err(|e| {
                vec![FieldError {
                    field: String::new(),
                    reason: format!("does not encode: {e}"),
                }]
            })
    }

    fn write(&self, schema: &Schema, json: &Json, out: &mut Vec<u8>) -> Written {
        use Stop::Invalid;
        match schema {
            Schema::Null => json.is_null().then_some(()).ok_or(Invalid),
            Schema::Boolean => {
                out.push(u8::from(json.as_bool().ok_or(Invalid)?));
                Ok(())
            }
            Schema::Int | Schema::TimeMillis => long(out, int(json).ok_or(Invalid)?.into()),
            Schema::Long | Schema::TimeMicros => long(out, json.as_i64().ok_or(Invalid)?),
            Schema::Date => long(out, date(json).ok_or(Invalid)?.into()),
            Schema::TimestampMillis | Schema::LocalTimestampMillis => {
                long(out, timestamp(json, 1_000).ok_or(Invalid)?)
            }
            Schema::TimestampMicros | Schema::LocalTimestampMicros => {
                long(out, timestamp(json, 1_000_000).ok_or(Invalid)?)
            }
            Schema::TimestampNanos | Schema::LocalTimestampNanos => {
                long(out, timestamp(json, 1_000_000_000).ok_or(Invalid)?)
            }
            Schema::Float => {
                let f = json.as_f64().ok_or(Invalid)? as f32;
                out.extend_from_slice(&f.to_le_bytes());
                Ok(())
            }
            Schema::Double => {
                out.extend_from_slice(&json.as_f64().ok_or(Invalid)?.to_le_bytes());
                Ok(())
            }
            Schema::String => bytes(out, json.as_str().ok_or(Invalid)?.as_bytes()),
            Schema::Bytes => bytes(out, &latin1(json).ok_or(Invalid)?),
            Schema::Enum(e) => {
                let symbol = json.as_str().ok_or(Invalid)?;
                let index = e.symbols.iter().position(|s| s == symbol).ok_or(Invalid)?;
                long(out, index as i64)
            }
            Schema::Fixed(f) => match latin1(json) {
                Some(raw) if raw.len() == f.size => {
                    out.extend_from_slice(&raw);
                    Ok(())
                }
                _ => Err(Invalid),
            },
            Schema::Array(array) => {
                let items = json.as_array().ok_or(Invalid)?;
                // One block of every item, then the empty block that ends the array.
                if !items.is_empty() {
                    long(out, items.len() as i64)?;
                    for item in items {
                        self.write(&array.items, item, out)?;
                    }
                }
                long(out, 0)
            }
            Schema::Map(map) => {
                let entries = json.as_object().ok_or(Invalid)?;
                if !entries.is_empty() {
                    long(out, entries.len() as i64)?;
                    for (key, value) in entries {
                        bytes(out, key.as_bytes())?;
                        self.write(&map.types, value, out)?;
                    }
                }
                long(out, 0)
            }
            Schema::Union(union) => self.write_union(union, json, out),
            Schema::Record(record) => self.write_record(record, json, out),
            Schema::Ref { name } => match self.names.get(name) {
                Some(named) => self.write(named, json, out),
                None => Err(Invalid),
            },
            Schema::Uuid(_) | Schema::Decimal(_) | Schema::BigDecimal | Schema::Duration(_) => {
                Err(Stop::Unsupported)
            }
        }
    }

    /// Fields in schema order; a missing one takes its default; a key the schema does not
    /// name makes the record invalid.
    fn write_record(&self, record: &RecordSchema, json: &Json, out: &mut Vec<u8>) -> Written {
        let object = json.as_object().ok_or(Stop::Invalid)?;
        let mut given = 0;
        for field in &record.fields {
            match (object.get(&field.name), &field.default) {
                (Some(value), _) => {
                    given += 1;
                    self.write(&field.schema, value, out)?;
                }
                // A union's default belongs to its first branch.
                (None, Some(default)) => match &field.schema {
                    Schema::Union(union) => {
                        let first = union.variants().first().ok_or(Stop::Invalid)?;
                        long(out, 0)?;
                        self.write(first, default, out)?;
                    }
                    other => self.write(other, default, out)?,
                },
                (None, None) => return Err(Stop::Invalid),
            }
        }
        // Field names are unique: fewer matches than keys means an unknown key.
        if given == object.len() {
            Ok(())
        } else {
            Err(Stop::Invalid)
        }
    }

    /// The first branch the JSON fits, as the value path chooses: null only to a null
    /// branch, anything else to the first non-null branch that takes it.
    fn write_union(&self, union: &UnionSchema, json: &Json, out: &mut Vec<u8>) -> Written {
        let start = out.len();
        for (index, variant) in union.variants().iter().enumerate() {
            if json.is_null() != matches!(variant, Schema::Null) {
                continue;
            }
            long(out, index as i64)?;
            match self.write(variant, json, out) {
                Ok(()) => return Ok(()),
                Err(Stop::Invalid) => out.truncate(start),
                Err(Stop::Unsupported) => return Err(Stop::Unsupported),
            }
        }
        Err(Stop::Invalid)
    }
}

/// Avro's `long` and `int`: zig-zag, then a little-endian base-128 varint.
fn long(out: &mut Vec<u8>, n: i64) -> Written {
    let mut z = ((n << 1) ^ (n >> 63)) as u64;
    while z >= 0x80 {
        out.push((z as u8) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
    Ok(())
}

/// Avro's `bytes` and `string`: the length, then the bytes.
fn bytes(out: &mut Vec<u8>, raw: &[u8]) -> Written {
    long(out, raw.len() as i64)?;
    out.extend_from_slice(raw);
    Ok(())
}
