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

/// Header naming the residency region of a record's data (set by ingestion for datasets
/// that declare one); a service of another region refuses the record.
pub const REGION_HEADER: &str = "mlops-region";

/// Header carrying the event id of a raw record (set by ingestion for datasets with an
/// event id): ingestion reads it back after a crash to remember what it had produced.
pub const EVENT_ID_HEADER: &str = "mlops-event-id";

/// Why a record carrying `region` may not be handled by a service of region `here`, if
/// it may not.
pub fn foreign_region(region: Option<&str>, here: Option<&str>) -> Option<String> {
    match (region, here) {
        (Some(theirs), Some(ours)) if theirs != ours => Some(format!(
            "data of region {theirs:?} may not be handled by a service of region {ours:?}"
        )),
        (Some(theirs), None) => Some(format!(
            "data of region {theirs:?} may not be handled by a service without a region"
        )),
        _ => None,
    }
}

/// The one rule for dataset names, which become topic names (`raw.<dataset>`): a
/// lowercase letter, then lowercase letters, digits, `_` and `-`, at most 100 in all. No
/// dot, so that `raw.<dataset>` never reads as another dataset's dead-letter topic.
pub fn check_dataset_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let ok = matches!(chars.next(), Some('a'..='z'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_' | '-'))
        && name.len() <= 100;
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{name:?} must start with a-z and use only a-z, 0-9, _ and - (at most 100)"
        ))
    }
}

/// Matches every raw topic (not their dead-letter topics): the dataset-name rule above.
pub const RAW_TOPIC_PATTERN: &str = r"^raw\.[a-z][a-z0-9_-]*$";

/// Matches every prediction topic (`predictions.<model>`; model names follow the
/// dataset-name rule) and not their dead-letter topics: a consumer of prediction logs that
/// also read `predictions.<model>.dlq` would fail on each dead letter and write it to a
/// `.dlq.dlq`, which it would read in turn.
pub const PREDICTIONS_TOPIC_PATTERN: &str = r"^predictions\.[a-z][a-z0-9_-]*$";

/// Matches every feature view's topic (`features.<view>`; view names are lowercase
/// identifiers) and not their dead-letter topics.
pub const FEATURES_TOPIC_PATTERN: &str = r"^features\.[a-z_][a-z0-9_]*$";

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
    fn one_rule_for_dataset_names() {
        for good in ["payments", "p2p_transfers-eu", "a"] {
            assert_eq!(check_dataset_name(good), Ok(()), "{good}");
        }
        let too_long = "a".repeat(101);
        for bad in ["", "Payments", "2fa", "_x", "a.b", "a b", too_long.as_str()] {
            assert!(check_dataset_name(bad).is_err(), "{bad}");
        }
        assert_eq!(
            check_dataset_name("a.b").unwrap_err(),
            "\"a.b\" must start with a-z and use only a-z, 0-9, _ and - (at most 100)"
        );
    }

    #[test]
    fn patterns_take_every_topic_of_their_kind_and_no_dead_letters() {
        let matches =
            |pattern: &str, topic: &str| regex::Regex::new(pattern).unwrap().is_match(topic);
        for (pattern, name) in [
            (RAW_TOPIC_PATTERN, raw("p2p_transfers-eu")),
            (PREDICTIONS_TOPIC_PATTERN, predictions("demo_big-spender2")),
            (FEATURES_TOPIC_PATTERN, features("spend_1h")),
            (FEATURES_TOPIC_PATTERN, features("_private")),
        ] {
            assert!(matches(pattern, &name), "{pattern} misses {name}");
            let letters = dead_letter(&name);
            assert!(!matches(pattern, &letters), "{pattern} takes {letters}");
            let again = dead_letter(&letters);
            assert!(!matches(pattern, &again), "{pattern} takes {again}");
        }
        assert!(!matches(PREDICTIONS_TOPIC_PATTERN, "predictionsx"));
        assert!(!matches(FEATURES_TOPIC_PATTERN, "features."));
    }

    #[test]
    fn derived_names_follow_the_conventions() {
        assert_eq!(raw("payments"), "raw.payments");
        assert_eq!(dead_letter(&raw("payments")), "raw.payments.dlq");
        assert_eq!(value_subject(MODELS_LIFECYCLE), "models.lifecycle-value");
        assert_eq!(predictions("fraud"), "predictions.fraud");
        assert_eq!(features("txn_stats"), "features.txn_stats");
    }
}
