//! A view version's stream job, and how a declared spec becomes a version: checked against
//! the source dataset's schema, its output schema derived and registered as
//! `features.<view>-value`.

use std::sync::Arc;

use apache_avro::{Schema, types::Value, writer::datum::GenericDatumWriter};
use futures::future::try_join_all;
use mlops_kafka::{Producer, Record};
use mlops_schema::{AvroCodec, json::FieldError};
use polars::prelude::*;
use serde_json::json;

use crate::{
    catalog::{FeatureField, ViewVersion},
    decode::{BatchBuilder, RawEvent, source_types},
    online::{OnlineStore, latest_per_entity},
    pipeline::{PipelineState, ViewPipeline},
    spec::FeatureViewSpec,
    store::FeatureStore,
    stream::{BatchJob, Checkpoint, Processed},
};

/// Why a spec cannot become a version.
#[derive(Debug)]
pub enum DeclareError {
    Invalid(Vec<FieldError>),
    /// The source dataset has no schema in the registry.
    UnknownSource(String),
    /// The registry refused the derived schema (incompatible change).
    Incompatible(String),
    Unavailable(String),
}

impl From<crate::store::StoreError> for DeclareError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Unavailable(e.to_string())
    }
}

/// Polars type of a dataset column from its stored name.
fn parse_dtype(name: &str) -> DataType {
    match name {
        "i64" => DataType::Int64,
        "f64" => DataType::Float64,
        "bool" => DataType::Boolean,
        _ => DataType::String,
    }
}

fn avro_type(dtype: &DataType) -> Option<&'static str> {
    match dtype {
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => Some("long"),
        DataType::Float32 | DataType::Float64 => Some("double"),
        DataType::String => Some("string"),
        DataType::Boolean => Some("boolean"),
        _ => None,
    }
}

/// Checks `spec` against the source schema and builds version `number` of it (without
/// registering anything).
pub fn build_version(
    spec: FeatureViewSpec,
    number: i32,
    source_schema: &Schema,
) -> Result<(ViewVersion, ViewPipeline), DeclareError> {
    spec.check().map_err(DeclareError::Invalid)?;
    let columns = spec.source_columns();
    let types = source_types(source_schema, &columns, &spec.entity_key, &spec.event_time)
        .map_err(DeclareError::Invalid)?;
    let pipeline = ViewPipeline::new(&spec, number, types.clone()).map_err(|e| {
        DeclareError::Invalid(vec![FieldError {
            field: "features".into(),
            reason: e.to_string(),
        }])
    })?;
    let output = pipeline.output_schema().map_err(|e| {
        DeclareError::Invalid(vec![FieldError {
            field: "features".into(),
            reason: format!("cannot be computed from the source dataset: {e}"),
        }])
    })?;
    let mut errors = Vec::new();
    let mut features = Vec::new();
    for (name, dtype) in &output {
        match avro_type(dtype) {
            Some(t) => features.push(FeatureField {
                name: name.clone(),
                avro_type: t.to_owned(),
            }),
            None => errors.push(FieldError {
                field: field_path(&spec, name),
                reason: format!(
                    "computes a {dtype}; a feature must be a number, string or boolean (add a cast)"
                ),
            }),
        }
    }
    if !errors.is_empty() {
        return Err(DeclareError::Invalid(errors));
    }
    let mut fields = vec![
        json!({"name": "entity_id", "type": "string"}),
        json!({"name": "event_time", "type": {"type": "long", "logicalType": "timestamp-millis"}}),
        json!({"name": "view_version", "type": "int"}),
    ];
    for feature in &features {
        fields.push(
            json!({"name": feature.name, "type": ["null", feature.avro_type], "default": null}),
        );
    }
    fields.extend([
        json!({"name": "source_partition", "type": "int", "doc": "Raw partition of the event"}),
        json!({"name": "source_offset", "type": "long", "doc": "Raw offset of the event"}),
        json!({"name": "revision", "type": "long", "doc": "Rows of one event with a higher revision replace lower ones"}),
    ]);
    let schema = json!({
        "type": "record",
        "name": spec.name,
        "namespace": "io.mlops.features",
        "doc": format!("Feature view {} computed from dataset {}", spec.name, spec.source),
        "fields": fields,
    });
    let version = ViewVersion {
        name: spec.name.clone(),
        version: number,
        source_columns: types
            .iter()
            .map(|(n, t)| (n.clone(), dtype_name(t).to_owned()))
            .collect(),
        spec,
        features,
        schema,
        schema_id: 0,
        created_at: mlops_events::now_millis(),
    };
    Ok((version, pipeline))
}

fn dtype_name(dtype: &DataType) -> &'static str {
    match dtype {
        DataType::Int64 => "i64",
        DataType::Float64 => "f64",
        DataType::Boolean => "bool",
        _ => "str",
    }
}

fn field_path(spec: &FeatureViewSpec, name: &str) -> String {
    if let Some(i) = spec.features.iter().position(|f| f.name == name) {
        format!("features[{i}]")
    } else if let Some(i) = spec.aggregations.iter().position(|a| a.name == name) {
        format!("aggregations[{i}]")
    } else {
        name.to_owned()
    }
}

/// The pipeline of a stored version.
pub fn pipeline_of(version: &ViewVersion) -> PolarsResult<ViewPipeline> {
    let types = version
        .source_columns
        .iter()
        .map(|(n, t)| (n.clone(), parse_dtype(t)))
        .collect();
    ViewPipeline::new(&version.spec, version.version, types)
}

/// The stream job of one view version.
pub struct ViewJob {
    version: Arc<ViewVersion>,
    /// Shared with the CPU pool, where each batch is computed.
    pipeline: Arc<std::sync::Mutex<ViewPipeline>>,
    codec: Arc<AvroCodec>,
    producer: Producer,
    writer_schema: Schema,
    online: Arc<OnlineStore>,
    /// Latest rows per entity of the batch awaiting its checkpoint.
    pending: Option<DataFrame>,
    /// Entities erased by the batch, forgotten by the online store once it is committed.
    erased: Vec<String>,
    /// Residency region of the service: records of another region are skipped (the raw
    /// intake dead-letters them once).
    region: Option<String>,
}

impl ViewJob {
    pub fn new(
        version: Arc<ViewVersion>,
        codec: Arc<AvroCodec>,
        producer: Producer,
        online: Arc<OnlineStore>,
    ) -> anyhow::Result<Self> {
        let pipeline = Arc::new(std::sync::Mutex::new(pipeline_of(&version)?));
        let writer_schema = Schema::parse(&version.schema)?;
        Ok(Self {
            version,
            pipeline,
            codec,
            producer,
            writer_schema,
            online,
            pending: None,
            erased: Vec::new(),
            region: None,
        })
    }

    /// Handles data of `region` only.
    pub fn in_region(mut self, region: Option<String>) -> Self {
        self.region = region;
        self
    }

    /// The pipeline, between batches (never held across an await).
    fn pipeline(&self) -> std::sync::MutexGuard<'_, ViewPipeline> {
        self.pipeline.lock().expect("pipeline")
    }

    fn feature_names(&self) -> Vec<String> {
        self.version
            .features
            .iter()
            .map(|f| f.name.clone())
            .collect()
    }

    /// Publishes `rows` to the view's topic, each row's record in the trace of the source
    /// record it was computed from (`source_partition`, `source_offset`), so an event's
    /// trace runs on from ingestion through its feature row to whoever consumes it.
    async fn publish(&self, rows: &DataFrame, records: &[Record]) -> anyhow::Result<()> {
        let topic = self.version.topic();
        let parents: std::collections::HashMap<(i32, i64), opentelemetry::Context> = records
            .iter()
            .filter_map(|r| Some(((r.partition, r.offset), r.trace_context()?)))
            .collect();
        let mut parent_of = Vec::with_capacity(rows.height());
        let writer = GenericDatumWriter::builder(&self.writer_schema).build()?;
        let mut payloads = Vec::with_capacity(rows.height());
        let columns = rows.columns();
        let names: Vec<&str> = columns.iter().map(|c| c.name().as_str()).collect();
        for i in 0..rows.height() {
            let mut fields = Vec::with_capacity(columns.len());
            let mut key = Vec::new();
            let mut source = (None, None);
            for (name, column) in names.iter().zip(columns) {
                let value = column.get(i)?;
                match *name {
                    "entity_id" => key = value.get_str().unwrap_or_default().as_bytes().to_vec(),
                    "source_partition" => source.0 = value.extract::<i32>(),
                    "source_offset" => source.1 = value.extract::<i64>(),
                    _ => {}
                }
                fields.push(((*name).to_owned(), avro_value(name, &value)));
            }
            let body = writer.write_value_to_vec(Value::Record(fields))?;
            payloads.push((key, mlops_schema::frame(self.version.schema_id, &body)));
            parent_of.push(match source {
                (Some(partition), Some(offset)) => parents.get(&(partition, offset)).cloned(),
                _ => None,
            });
        }
        // Rows carry the region of the data they were computed from, so that a consumer
        // of another region refuses them as it refuses the raw events.
        let headers = || mlops_kafka::region_headers(self.region.as_deref());
        try_join_all(
            payloads
                .iter()
                .zip(parent_of)
                .map(|((key, payload), parent)| {
                    self.producer
                        .send_bytes_under(parent, &topic, Some(key), payload, headers())
                }),
        )
        .await?;
        Ok(())
    }
}

/// Avro value of one cell of a feature row: the row's own columns by name, features as
/// `["null", T]` unions.
fn avro_value(column: &str, value: &AnyValue<'_>) -> Value {
    match column {
        "entity_id" => return Value::String(value.str_value().into_owned()),
        "event_time" => return Value::TimestampMillis(value.extract::<i64>().unwrap_or_default()),
        "view_version" | "source_partition" => {
            return Value::Int(value.extract::<i32>().unwrap_or_default());
        }
        "source_offset" | "revision" => {
            return Value::Long(value.extract::<i64>().unwrap_or_default());
        }
        _ => {}
    }
    let plain = match value {
        AnyValue::Null => Value::Null,
        AnyValue::Boolean(b) => Value::Boolean(*b),
        AnyValue::String(s) => Value::String((*s).to_owned()),
        AnyValue::StringOwned(s) => Value::String(s.to_string()),
        AnyValue::Float32(x) => Value::Double(f64::from(*x)),
        AnyValue::Float64(x) => Value::Double(*x),
        other if other.is_integer() => Value::Long(other.extract::<i64>().unwrap_or_default()),
        _ => Value::Null,
    };
    match plain {
        Value::Null => Value::Union(0, Box::new(Value::Null)),
        other => Value::Union(1, Box::new(other)),
    }
}

impl BatchJob for ViewJob {
    fn name(&self) -> String {
        job_name(&self.version.name, self.version.version)
    }

    fn state_prefix(&self) -> String {
        self.version.state_prefix()
    }

    fn output_prefix(&self) -> String {
        self.version.offline_prefix()
    }

    async fn restore(
        &mut self,
        store: &FeatureStore,
        checkpoint: &Checkpoint,
    ) -> anyhow::Result<()> {
        let buffer = match &checkpoint.buffer {
            Some(path) => store
                .get_frame(path)
                .await?
                .unwrap_or_else(|| self.pipeline().empty_input()),
            None => self.pipeline().empty_input(),
        };
        self.pipeline().restore(PipelineState {
            buffer,
            watermarks: checkpoint.watermarks.clone(),
        });
        self.pending = None;
        // The online store is rebuilt from what the offline store holds at the checkpoint.
        let erased = store.erased_entities(&self.version.spec.source).await?;
        let latest = match store.read_frames(&self.version.offline_prefix()).await? {
            Some(rows) => latest_per_entity(crate::store::without_entities(rows, &erased)?)?,
            None => DataFrame::empty(),
        };
        self.online.replace(
            &self.version.name,
            self.version.version,
            &latest,
            &self.feature_names(),
        )?;
        Ok(())
    }

    async fn process(
        &mut self,
        store: &FeatureStore,
        records: &[Record],
        batch: u64,
    ) -> anyhow::Result<Processed> {
        let spec = &self.version.spec;
        let source = self.pipeline().source().to_vec();
        let mut builder = BatchBuilder::new(source, &spec.entity_key, &spec.event_time);
        let mut dead_letters = Vec::new();
        let mut index_of = std::collections::HashMap::new();
        let mut erased = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if record.foreign_region(self.region.as_deref()).is_some() {
                continue;
            }
            let Some(payload) = record.payload.as_deref() else {
                // A tombstone: its key (the entity) is to be forgotten (GDPR erasure).
                if let Some(entity) = record
                    .key
                    .as_deref()
                    .and_then(|k| std::str::from_utf8(k).ok())
                {
                    erased.push(entity.to_owned());
                }
                continue;
            };
            let decoded = match self.codec.decode_record(payload).await {
                Ok(decoded) => decoded,
                // A record that can never decode is dead-lettered once, by the raw intake;
                // each view skips it.
                Err(e) if e.is_poison() => continue,
                // The registry is unreachable: the batch fails and is retried from the
                // checkpoint. Skipping would checkpoint past a valid record and lose it.
                Err(e) => return Err(e.into()),
            };
            match builder.push(RawEvent {
                partition: record.partition,
                offset: record.offset,
                value: &decoded.value,
            }) {
                Ok(()) => {
                    index_of.insert((record.partition, record.offset), index);
                }
                Err(reason) => dead_letters.push((index, "invalid", reason)),
            }
        }
        let pipeline = self.pipeline.clone();
        let output = mlops_runtime::cpu::run(move || {
            let frame = builder.finish()?;
            let mut pipeline = pipeline.lock().expect("pipeline");
            anyhow::Ok(pipeline.process(frame, batch as i64)?)
        })
        .await?;
        let late = format!(
            "late: the event time is more than the allowed lateness ({}) behind the newest event time of view {}",
            spec.allowed_lateness, spec.name
        );
        let refused = output
            .late
            .into_iter()
            .map(|(partition, offset)| (partition, offset, "late", late.clone()))
            .chain(
                output
                    .invalid
                    .into_iter()
                    .map(|(partition, offset, reason)| (partition, offset, "invalid", reason)),
            );
        for (partition, offset, class, reason) in refused {
            if let Some(index) = index_of.get(&(partition, offset)) {
                dead_letters.push((*index, class, reason));
            }
        }
        // Recorded before the batch commits: a crash replays the tombstone, and erasing
        // twice is erasing once.
        for entity in &erased {
            store
                .erase_entity(&spec.source, entity, mlops_events::now_millis())
                .await?;
        }
        self.erased = erased;
        let rows = output.rows;
        if rows.height() > 0 {
            self.publish(&rows, records).await?;
            store
                .put_batch_by_date(&self.version.offline_prefix(), &rows, batch)
                .await?;
            self.pending = Some(latest_per_entity(rows)?);
        }
        let pipeline = self.pipeline();
        let state = pipeline.state();
        Ok(Processed {
            dead_letters,
            buffer: Some(state.buffer.clone()),
            watermarks: state.watermarks.clone(),
        })
    }

    fn committed(&mut self) -> anyhow::Result<()> {
        if let Some(latest) = self.pending.take() {
            self.online.apply(
                &self.version.name,
                self.version.version,
                &latest,
                &self.feature_names(),
            )?;
        }
        for entity in std::mem::take(&mut self.erased) {
            self.online.remove(&self.version.name, &entity);
        }
        Ok(())
    }
}

/// The stream job of a view version, as metrics and the supervisor name it.
pub fn job_name(view: &str, version: i32) -> String {
    format!("view {view} v{version}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feature_rows_encode_with_the_derived_schema() {
        let source = Schema::parse_str(
            r#"{"type": "record", "name": "P", "fields": [
                {"name": "customer_id", "type": "string"},
                {"name": "amount", "type": "double"},
                {"name": "currency", "type": "string"},
                {"name": "ts", "type": {"type": "long", "logicalType": "timestamp-millis"}}]}"#,
        )
        .unwrap();
        let spec: FeatureViewSpec = serde_json::from_value(json!({
            "name": "v", "source": "p", "entity_key": "customer_id", "event_time": "ts",
            "features": [{"name": "amount"}, {"name": "currency", "encode": "onehot"}],
            "aggregations": [{"name": "n", "function": "count", "window": "1h"}]
        }))
        .unwrap();
        let (version, mut pipeline) = build_version(spec, 1, &source).unwrap();
        let batch = df![
            "__entity" => ["c1"], "__time" => [5i64], "__partition" => [0i32], "__offset" => [7i64],
            "customer_id" => ["c1"], "amount" => [1.5], "currency" => ["EUR"], "ts" => [5i64],
        ]
        .unwrap();
        let rows = pipeline.process(batch, 1).unwrap().rows;
        let schema = Schema::parse(&version.schema).unwrap();
        let writer = GenericDatumWriter::builder(&schema).build().unwrap();
        let columns = rows.columns();
        let fields: Vec<(String, Value)> = columns
            .iter()
            .map(|c| {
                let name = c.name().to_string();
                let value = avro_value(&name, &c.get(0).unwrap());
                (name, value)
            })
            .collect();
        let record = Value::Record(fields.clone());
        assert!(
            writer.write_value_to_vec(record).is_ok(),
            "{fields:?} against {}",
            version.schema
        );
    }
}
