//! The monitor's canary verdicts (`monitoring.canary-decisions`) acted on: promote moves
//! the canary to production, widen changes its share, rollback archives it. A verdict seen
//! twice (same decision id) changes nothing; one that no longer fits the model's stages
//! (the canary was replaced meanwhile) is dead-lettered with the rule it breaks.

use std::sync::Arc;

use mlops_events::{CanaryDecision, CanaryVerdict, ModelStage};
use mlops_kafka::{Handler, HandlerError, Record};
use mlops_schema::AvroCodec;
use tokio::sync::Notify;
use tracing::info;

use super::{
    rules::Refusal,
    store::{Cause, ModelStore, ModelStoreError},
};

pub const GROUP: &str = "registry.canary-decisions";

#[derive(Clone)]
pub struct Decisions {
    pub store: ModelStore,
    pub codec: Arc<AvroCodec>,
    pub wake: Arc<Notify>,
    pub auditor: mlops_service::audit::Auditor,
}

impl Handler for Decisions {
    async fn handle(&self, record: &Record) -> Result<(), HandlerError> {
        let Some(payload) = record.payload.as_deref() else {
            return Ok(());
        };
        let decision: CanaryDecision = self.codec.decode(payload).await?;
        let seen = self
            .store
            .caused_by(&decision.decision_id)
            .await
            .map_err(|e| HandlerError::retry(e.to_string()))?;
        if seen {
            return Ok(());
        }
        let (to, percent) = match decision.decision {
            CanaryVerdict::Promote => (ModelStage::Production, None),
            CanaryVerdict::Widen => (ModelStage::Canary, decision.new_percent),
            CanaryVerdict::Rollback => (ModelStage::Archived, None),
        };
        let current = self
            .store
            .version(&decision.model_name, i64::from(decision.canary_version))
            .await;
        match current {
            Ok(v) if v.stage == ModelStage::Canary => {}
            Ok(v) => {
                return Err(HandlerError::poison(
                    "refused",
                    format!(
                        "version {} of {:?} is {:?}, not in canary: the decision no longer applies",
                        v.version, decision.model_name, v.stage
                    ),
                ));
            }
            Err(e) => return Err(refusal(e)),
        }
        let cause = Cause {
            reason: format!("canary decision: {}", decision.reason),
            actor: "monitoring".into(),
            triggering_event_id: Some(decision.decision_id.clone()),
            trace_id: decision.trace_id.clone(),
        };
        self.store
            .transition(
                &decision.model_name,
                i64::from(decision.canary_version),
                to,
                percent,
                &cause,
            )
            .await
            .map_err(refusal)?;
        info!(model = %decision.model_name, version = decision.canary_version, verdict = ?decision.decision, "canary decision applied");
        let action = match decision.decision {
            CanaryVerdict::Rollback => "model.rollback",
            _ => "model.transition",
        };
        let _ = self
            .auditor
            .record(mlops_service::audit::AuditEntry {
                actor: "monitoring".into(),
                role: Some("service".into()),
                action: action.into(),
                resource: format!(
                    "models/{}/versions/{}",
                    decision.model_name, decision.canary_version
                ),
                outcome: mlops_events::AuditOutcome::Success,
                reason: Some(cause.reason.clone()),
                source_ip: None,
            })
            .await;
        self.wake.notify_one();
        Ok(())
    }
}

fn refusal(e: ModelStoreError) -> HandlerError {
    match e {
        ModelStoreError::Refused(Refusal::Rule(text)) => HandlerError::poison("refused", text),
        ModelStoreError::Refused(other) => HandlerError::poison("refused", other.to_string()),
        ModelStoreError::UnknownModel(model) => {
            HandlerError::poison("refused", format!("no model named {model:?}"))
        }
        other => HandlerError::retry(other.to_string()),
    }
}
