//! `models.lifecycle` into this instance's deployments. Every instance reads every event
//! (a consumer group of its own) from the beginning of the topic; events at or below the
//! sequence each model was rebuilt at are skipped, so nothing between the rebuild and the
//! subscription is missed and nothing is applied twice.

use std::sync::Arc;

use mlops_events::ModelLifecycleEvent;
use mlops_kafka::{Handler, HandlerError, Record};
use mlops_schema::AvroCodec;

use crate::deployments::Deployments;

#[derive(Clone)]
pub struct Lifecycle {
    pub deployments: Arc<Deployments>,
    pub codec: Arc<AvroCodec>,
}

impl Handler for Lifecycle {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let event: ModelLifecycleEvent = self.codec.decode(payload).await?;
        match self.deployments.apply(&event).await {
            Ok(_) => Ok(()),
            // A refused artifact never gets better: the previous version keeps serving and
            // the event goes to the dead-letter topic with the reason.
            Err(reason) if reason.contains("refused") => {
                Err(HandlerError::poison("artifact_refused", reason))
            }
            Err(reason) => Err(HandlerError::retry(reason)),
        }
    }
}
