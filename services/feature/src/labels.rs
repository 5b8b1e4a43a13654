//! Ground-truth labels from the `labels` topic, kept in the offline store by entity and
//! event time, for training sets. Labels often arrive long after the features they explain.

use std::sync::Arc;

use mlops_events::{GroundTruthLabel, LabelValue};
use mlops_kafka::Record;
use mlops_schema::AvroCodec;
use polars::prelude::*;

use crate::{
    store::FeatureStore,
    stream::{BatchJob, Checkpoint, Processed},
};

pub const LABELS_PREFIX: &str = "labels/";
pub const LABELS_GROUP: &str = "feature.labels";
/// Where the labels job keeps its checkpoint.
pub const LABELS_STATE_PREFIX: &str = "state/labels/";

pub struct LabelJob {
    codec: Arc<AvroCodec>,
    /// Residency region of the service: labels of another region are dead-lettered.
    region: Option<String>,
}

impl LabelJob {
    pub fn new(codec: Arc<AvroCodec>, region: Option<String>) -> Self {
        Self { codec, region }
    }
}

impl BatchJob for LabelJob {
    fn name(&self) -> String {
        "labels".into()
    }

    fn state_prefix(&self) -> String {
        LABELS_STATE_PREFIX.into()
    }

    fn output_prefix(&self) -> String {
        LABELS_PREFIX.into()
    }

    async fn restore(&mut self, _: &FeatureStore, _: &Checkpoint) -> anyhow::Result<()> {
        Ok(())
    }

    async fn process(
        &mut self,
        store: &FeatureStore,
        records: &[Record],
        batch: u64,
    ) -> anyhow::Result<Processed> {
        let mut dead_letters = Vec::new();
        let mut labels = Vec::new();
        for (index, record) in records.iter().enumerate() {
            if let Some(reason) = record.foreign_region(self.region.as_deref()) {
                dead_letters.push((index, "wrong_region", reason));
                continue;
            }
            let Some(payload) = record.payload.as_deref() else {
                continue;
            };
            match self.codec.decode::<GroundTruthLabel>(payload).await {
                Ok(label) => labels.push((record, label)),
                Err(e) if e.is_poison() => dead_letters.push((index, "decode", e.to_string())),
                Err(e) => return Err(e.into()),
            }
        }
        if !labels.is_empty() {
            let (numbers, classes): (Vec<Option<f64>>, Vec<Option<String>>) = labels
                .iter()
                .map(|(_, l)| match &l.label {
                    LabelValue::Number(x) => (Some(*x), None),
                    LabelValue::Class(c) => (None, Some(c.clone())),
                })
                .unzip();
            let frame = DataFrame::new_infer_height(vec![
                Column::new(
                    "label_id".into(),
                    labels
                        .iter()
                        .map(|(_, l)| l.label_id.as_str())
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "dataset".into(),
                    labels
                        .iter()
                        .map(|(_, l)| l.dataset.as_str())
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "entity_id".into(),
                    labels
                        .iter()
                        .map(|(_, l)| l.entity_id.as_str())
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "event_time".into(),
                    labels.iter().map(|(_, l)| l.event_time).collect::<Vec<_>>(),
                ),
                Column::new("label_value".into(), numbers),
                Column::new("label_class".into(), classes),
                Column::new(
                    "received_at".into(),
                    labels
                        .iter()
                        .map(|(_, l)| l.received_at)
                        .collect::<Vec<_>>(),
                ),
                Column::new(
                    "source_partition".into(),
                    labels.iter().map(|(r, _)| r.partition).collect::<Vec<_>>(),
                ),
                Column::new(
                    "source_offset".into(),
                    labels.iter().map(|(r, _)| r.offset).collect::<Vec<_>>(),
                ),
            ])?;
            store
                .put_batch_by_date(LABELS_PREFIX, &frame, batch)
                .await?;
        }
        Ok(Processed {
            dead_letters,
            buffer: None,
            watermarks: Default::default(),
        })
    }

    fn committed(&mut self) -> anyhow::Result<()> {
        Ok(())
    }
}
