//! The check every raw record passes before anything is computed from it.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use mlops_kafka::{Handler, HandlerError, Record};
use mlops_schema::AvroCodec;

/// Accepts a raw record only if it decodes and its schema is registered under its topic's
/// subject (`raw.<dataset>-value`): a record of another dataset is as wrong as garbage.
pub struct RawIntake {
    codec: Arc<AvroCodec>,
    /// Residency region of the service: records of another region are dead-lettered.
    region: Option<String>,
    /// (subject, schema id) pairs already checked.
    known: Mutex<HashMap<(String, u32), bool>>,
}

impl RawIntake {
    pub fn new(codec: Arc<AvroCodec>, region: Option<String>) -> Self {
        Self {
            codec,
            region,
            known: Mutex::new(HashMap::new()),
        }
    }

    async fn registered_under(&self, subject: &str, id: u32) -> Result<bool, HandlerError> {
        let key = (subject.to_owned(), id);
        if let Some(known) = self.known.lock().expect("cache lock").get(&key) {
            return Ok(*known);
        }
        let usages = self
            .codec
            .registry()
            .usages(id)
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
        let registered = usages.iter().any(|u| u.subject == subject);
        self.known
            .lock()
            .expect("cache lock")
            .insert(key, registered);
        Ok(registered)
    }
}

impl Handler for RawIntake {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        if let Some(reason) = record.foreign_region(self.region.as_deref()) {
            return Err(HandlerError::poison("wrong_region", reason));
        }
        // A tombstone carries no event.
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let decoded = self.codec.decode_record(payload).await?;
        let subject = mlops_events::topics::value_subject(&record.topic);
        if !self.registered_under(&subject, decoded.schema_id).await? {
            return Err(HandlerError::poison(
                "wrong_subject",
                format!(
                    "schema id {} is not registered under {subject}",
                    decoded.schema_id
                ),
            ));
        }
        Ok(())
    }
}
