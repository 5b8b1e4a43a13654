//! Topic and subject names. Every service derives names here so that producers and
//! consumers can never disagree on spelling.

/// Model registrations and stage transitions: the model-update topic.
pub const MODELS_LIFECYCLE: &str = "models.lifecycle";
/// Requests to (re)train a model.
pub const TRAINING_REQUESTS: &str = "training.requests";
/// Outcomes of training runs.
pub const TRAINING_RUNS: &str = "training.runs";
/// Drift incidents found by the monitor.
pub const MONITORING_DRIFT: &str = "monitoring.drift";
/// Canary verdicts from the monitor, acted on by the registry.
pub const CANARY_DECISIONS: &str = "monitoring.canary-decisions";
/// Ground-truth labels.
pub const LABELS: &str = "labels";
/// The append-only audit trail.
pub const AUDIT_LOG: &str = "audit.log";

/// Raw events of a user dataset.
pub fn raw(dataset: &str) -> String {
    format!("raw.{dataset}")
}

/// Computed rows of a feature view.
pub fn features(view: &str) -> String {
    format!("features.{view}")
}

/// Prediction log of a model.
pub fn predictions(model: &str) -> String {
    format!("predictions.{model}")
}

/// Dead-letter topic of any topic.
pub fn dead_letter(topic: &str) -> String {
    format!("{topic}.dlq")
}

/// Schema Registry subject of a topic's values (Confluent TopicNameStrategy).
pub fn value_subject(topic: &str) -> String {
    format!("{topic}-value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_names_follow_the_conventions() {
        assert_eq!(raw("payments"), "raw.payments");
        assert_eq!(dead_letter(&raw("payments")), "raw.payments.dlq");
        assert_eq!(value_subject(MODELS_LIFECYCLE), "models.lifecycle-value");
        assert_eq!(predictions("fraud"), "predictions.fraud");
        assert_eq!(features("txn_stats"), "features.txn_stats");
    }
}
