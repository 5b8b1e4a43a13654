//! Prometheus metrics of the consumer loops, registered in a service's registry.

use prometheus_client::{
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

type Labels = Vec<(String, String)>;

/// Counters and latencies every consumer loop of a process reports into.
#[derive(Clone)]
pub struct ConsumerMetrics {
    records: Family<Labels, Counter>,
    dead_letters: Family<Labels, Counter>,
    retries: Family<Labels, Counter>,
    commit_failures: Family<Labels, Counter>,
    handler_seconds: Family<Labels, Histogram>,
}

impl std::fmt::Debug for ConsumerMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerMetrics").finish_non_exhaustive()
    }
}

impl ConsumerMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::unregistered();
        registry.register(
            "mlops_consumer_records",
            "Records finished by consumer loops, by topic, group and outcome (processed, dead_lettered)",
            metrics.records.clone(),
        );
        registry.register(
            "mlops_consumer_dead_letters",
            "Records sent to a dead-letter topic, by source topic and error class",
            metrics.dead_letters.clone(),
        );
        registry.register(
            "mlops_consumer_retries",
            "Handler attempts that failed and will be retried, by topic and group",
            metrics.retries.clone(),
        );
        registry.register(
            "mlops_consumer_commit_failures",
            "Offset commits that failed (retried with the next commit), by group",
            metrics.commit_failures.clone(),
        );
        registry.register(
            "mlops_consumer_handler_seconds",
            "Time from a record's arrival to its commit, by topic",
            metrics.handler_seconds.clone(),
        );
        metrics
    }

    /// Metrics that count but are exposed nowhere, for loops without a registry.
    pub fn unregistered() -> Self {
        Self {
            records: Family::default(),
            dead_letters: Family::default(),
            retries: Family::default(),
            commit_failures: Family::default(),
            handler_seconds: Family::new_with_constructor(|| {
                Histogram::new([0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0])
            }),
        }
    }

    pub(crate) fn finished(&self, topic: &str, group: &str, outcome: &str, seconds: f64) {
        self.records
            .get_or_create(&vec![
                ("topic".to_owned(), topic.to_owned()),
                ("group".to_owned(), group.to_owned()),
                ("outcome".to_owned(), outcome.to_owned()),
            ])
            .inc();
        self.handler_seconds
            .get_or_create(&vec![("topic".to_owned(), topic.to_owned())])
            .observe(seconds);
    }

    pub(crate) fn dead_lettered(&self, topic: &str, class: &str) {
        self.dead_letters
            .get_or_create(&vec![
                ("topic".to_owned(), topic.to_owned()),
                ("class".to_owned(), class.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn retried(&self, topic: &str, group: &str) {
        self.retries
            .get_or_create(&vec![
                ("topic".to_owned(), topic.to_owned()),
                ("group".to_owned(), group.to_owned()),
            ])
            .inc();
    }

    pub(crate) fn commit_failed(&self, group: &str) {
        self.commit_failures
            .get_or_create(&vec![("group".to_owned(), group.to_owned())])
            .inc();
    }
}
