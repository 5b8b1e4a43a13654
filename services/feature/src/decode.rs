//! From Avro records to polars columns: the only per-record loop of the pipeline, since
//! Avro is a row format.

use apache_avro::{Schema, types::Value};
use mlops_schema::json::FieldError;
use polars::prelude::*;

use crate::pipeline::{ENTITY, OFFSET, PARTITION, TIME};

/// The polars type of each column of a dataset's record schema that the view reads.
/// Entity key and event time must be scalars; the event time a long (epoch milliseconds)
/// or a timestamp.
pub fn source_types(
    schema: &Schema,
    columns: &[String],
    entity_key: &str,
    event_time: &str,
) -> Result<Vec<(String, DataType)>, Vec<FieldError>> {
    let Schema::Record(record) = schema else {
        return Err(vec![FieldError {
            field: "source".into(),
            reason: "the source dataset's schema is not a record".into(),
        }]);
    };
    let mut errors = Vec::new();
    let mut types = Vec::new();
    for column in columns {
        let field_name = if column == entity_key {
            "entity_key"
        } else if column == event_time {
            "event_time"
        } else {
            "features"
        };
        let Some(field) = record.fields.iter().find(|f| &f.name == column) else {
            let known: Vec<&str> = record.fields.iter().map(|f| f.name.as_str()).collect();
            errors.push(FieldError {
                field: field_name.into(),
                reason: format!(
                    "the source dataset has no field {column:?}; it has {}",
                    known.join(", ")
                ),
            });
            continue;
        };
        match scalar_type(&field.schema) {
            Some(dtype) => {
                if column == event_time && dtype != DataType::Int64 {
                    errors.push(FieldError {
                        field: "event_time".into(),
                        reason: format!(
                            "{column:?} must be a long or timestamp (epoch milliseconds), not {dtype}"
                        ),
                    });
                }
                types.push((column.clone(), dtype));
            }
            None => errors.push(FieldError {
                field: field_name.into(),
                reason: format!(
                    "{column:?} is not a scalar field (long, int, double, float, string, enum, boolean)"
                ),
            }),
        }
    }
    if errors.is_empty() {
        Ok(types)
    } else {
        Err(errors)
    }
}

fn scalar_type(schema: &Schema) -> Option<DataType> {
    match schema {
        Schema::Int | Schema::Long | Schema::TimestampMillis | Schema::TimestampMicros => {
            Some(DataType::Int64)
        }
        Schema::Float | Schema::Double => Some(DataType::Float64),
        Schema::String | Schema::Enum(_) | Schema::Uuid(_) => Some(DataType::String),
        Schema::Boolean => Some(DataType::Boolean),
        Schema::Union(union) => {
            let mut types = union
                .variants()
                .iter()
                .filter(|v| **v != Schema::Null)
                .map(scalar_type);
            let first = types.next()??;
            types.all(|t| t.as_ref() == Some(&first)).then_some(first)
        }
        _ => None,
    }
}

/// One raw event to decode: its coordinates and its Avro value.
pub struct RawEvent<'a> {
    pub partition: i32,
    pub offset: i64,
    pub value: &'a Value,
}

/// Column builders for one batch.
pub struct BatchBuilder {
    source: Vec<(String, DataType)>,
    entity_key: String,
    event_time: String,
    entities: Vec<Option<String>>,
    times: Vec<Option<i64>>,
    partitions: Vec<i32>,
    offsets: Vec<i64>,
    columns: Vec<Vec<AnyValue<'static>>>,
}

impl BatchBuilder {
    /// Owns its column list, so that a finished batch can move to the CPU pool.
    pub fn new(
        source: Vec<(String, DataType)>,
        entity_key: impl Into<String>,
        event_time: impl Into<String>,
    ) -> Self {
        Self {
            columns: vec![Vec::new(); source.len()],
            source,
            entity_key: entity_key.into(),
            event_time: event_time.into(),
            entities: Vec::new(),
            times: Vec::new(),
            partitions: Vec::new(),
            offsets: Vec::new(),
        }
    }

    /// Adds an event; `Err` says why it cannot be used (no entity key or event time).
    pub fn push(&mut self, event: RawEvent<'_>) -> Result<(), String> {
        let Value::Record(fields) = event.value else {
            return Err("the event is not a record".into());
        };
        let lookup = |name: &str| {
            fields
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| unwrap_union(v))
        };
        let entity = match lookup(&self.entity_key) {
            Some(Value::String(s)) | Some(Value::Enum(_, s)) => s.clone(),
            Some(Value::Long(n)) | Some(Value::TimestampMillis(n)) => n.to_string(),
            Some(Value::Int(n)) => n.to_string(),
            Some(Value::Uuid(u)) => u.to_string(),
            _ => return Err(format!("{}: the entity key is missing", self.entity_key)),
        };
        let time = match lookup(&self.event_time) {
            Some(Value::Long(n)) | Some(Value::TimestampMillis(n)) => *n,
            Some(Value::TimestampMicros(n)) => n.div_euclid(1000),
            Some(Value::Int(n)) => i64::from(*n),
            _ => return Err(format!("{}: the event time is missing", self.event_time)),
        };
        self.entities.push(Some(entity));
        self.times.push(Some(time));
        self.partitions.push(event.partition);
        self.offsets.push(event.offset);
        for ((name, dtype), column) in self.source.iter().zip(&mut self.columns) {
            column.push(any_value(lookup(name), dtype));
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.offsets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offsets.is_empty()
    }

    pub fn finish(self) -> PolarsResult<DataFrame> {
        let mut columns = vec![
            Column::new(ENTITY.into(), self.entities),
            Column::new(TIME.into(), self.times),
            Column::new(PARTITION.into(), self.partitions),
            Column::new(OFFSET.into(), self.offsets),
        ];
        for ((name, dtype), values) in self.source.iter().zip(self.columns) {
            let series =
                Series::from_any_values_and_dtype(name.as_str().into(), &values, dtype, false)?;
            columns.push(series.into());
        }
        DataFrame::new_infer_height(columns)
    }
}

fn unwrap_union(value: &Value) -> &Value {
    match value {
        Value::Union(_, inner) => unwrap_union(inner),
        other => other,
    }
}

fn any_value(value: Option<&Value>, dtype: &DataType) -> AnyValue<'static> {
    let Some(value) = value else {
        return AnyValue::Null;
    };
    match (dtype, value) {
        (DataType::Int64, Value::Long(n) | Value::TimestampMillis(n)) => AnyValue::Int64(*n),
        (DataType::Int64, Value::TimestampMicros(n)) => AnyValue::Int64(n.div_euclid(1000)),
        (DataType::Int64, Value::Int(n)) => AnyValue::Int64(i64::from(*n)),
        (DataType::Float64, Value::Double(x)) => AnyValue::Float64(*x),
        (DataType::Float64, Value::Float(x)) => AnyValue::Float64(f64::from(*x)),
        (DataType::Float64, Value::Long(n)) => AnyValue::Float64(*n as f64),
        (DataType::Float64, Value::Int(n)) => AnyValue::Float64(f64::from(*n)),
        (DataType::String, Value::String(s) | Value::Enum(_, s)) => {
            AnyValue::StringOwned(s.as_str().into())
        }
        (DataType::String, Value::Uuid(u)) => AnyValue::StringOwned(u.to_string().into()),
        (DataType::Boolean, Value::Boolean(b)) => AnyValue::Boolean(*b),
        _ => AnyValue::Null,
    }
}
