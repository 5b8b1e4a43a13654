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
    registry_url: String,
    http: reqwest::Client,
    /// (subject, schema id) pairs already checked.
    known: Mutex<HashMap<(String, u32), bool>>,
}

impl RawIntake {
    pub fn new(codec: Arc<AvroCodec>, registry_url: &str) -> Self {
        Self {
            codec,
            registry_url: registry_url.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            known: Mutex::new(HashMap::new()),
        }
    }

    async fn registered_under(&self, subject: &str, id: u32) -> Result<bool, HandlerError> {
        let key = (subject.to_owned(), id);
        if let Some(known) = self.known.lock().expect("cache lock").get(&key) {
            return Ok(*known);
        }
        let url = format!("{}/schemas/ids/{id}/versions", self.registry_url);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| HandlerError::retry(format!("schema registry: {e}")))?;
        if !response.status().is_success() {
            return Err(HandlerError::retry(format!(
                "schema registry answered {}",
                response.status()
            )));
        }
        let usages: Vec<serde_json::Value> = response
            .json()
            .await
            .map_err(|e| HandlerError::retry(format!("schema registry: {e}")))?;
        let registered = usages.iter().any(|u| u["subject"] == subject);
        self.known
            .lock()
            .expect("cache lock")
            .insert(key, registered);
        Ok(registered)
    }
}

impl Handler for RawIntake {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
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
