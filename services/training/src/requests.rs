//! The `training.requests` consumer: a request is recorded with its model's run (and its
//! offset committed) at once; the run itself happens elsewhere, so a long search never
//! holds the consumer past `max.poll.interval.ms`. A request for a model without a spec
//! is dead-lettered with that reason.

use std::sync::Arc;

use mlops_events::TrainingRequest;
use mlops_kafka::{Handler, HandlerError, Record};
use mlops_schema::AvroCodec;

use crate::runner::Runner;

pub const GROUP: &str = "training.requests";

#[derive(Clone)]
pub struct Requests {
    pub runner: Arc<Runner>,
    pub codec: Arc<AvroCodec>,
}

impl Handler for Requests {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let request: TrainingRequest = self.codec.decode(payload).await?;
        let specs = self
            .runner
            .store
            .specs()
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
        if !specs.iter().any(|s| s.name == request.model_name) {
            return Err(HandlerError::poison(
                "unknown_model",
                format!(
                    "no model spec named {:?}: declare it (POST /v1/models/specs) before asking to train it",
                    request.model_name
                ),
            ));
        }
        self.runner
            .request(&request)
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
        Ok(())
    }
}
