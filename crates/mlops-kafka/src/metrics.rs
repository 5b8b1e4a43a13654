//! Prometheus metrics of the consumer loops, registered in a service's registry.

use std::{collections::BTreeSet, sync::Arc};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
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
    lag: Family<Labels, Gauge>,
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
            "mlops_consumer_lag",
            "Records between a group's position and the end of a partition it owns, by group, \
             topic and partition (the Kafka client's statistics, every 5 s)",
            metrics.lag.clone(),
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
            lag: Family::default(),
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

    /// Sets the lag of every partition `group` owns now (`(topic, partition, lag)`), and
    /// forgets those it owned at the last report and no longer does (`owned`), so a
    /// revoked partition's lag does not stay behind as a stale alarm.
    pub(crate) fn lagging(
        &self,
        group: &str,
        now: Vec<(String, i32, i64)>,
        owned: &Arc<std::sync::Mutex<BTreeSet<(String, i32)>>>,
    ) {
        let labels = |topic: &str, partition: i32| {
            vec![
                ("group".to_owned(), group.to_owned()),
                ("topic".to_owned(), topic.to_owned()),
                ("partition".to_owned(), partition.to_string()),
            ]
        };
        let mut owned = owned.lock().unwrap_or_else(|e| e.into_inner());
        let current: BTreeSet<(String, i32)> =
            now.iter().map(|(t, p, _)| (t.clone(), *p)).collect();
        for (topic, partition) in owned.difference(&current) {
            self.lag.remove(&labels(topic, *partition));
        }
        for (topic, partition, lag) in now {
            self.lag.get_or_create(&labels(&topic, partition)).set(lag);
        }
        *owned = current;
    }

    /// Makes the series of a consumer of `topics` in `group` exist at 0 from its start,
    /// so a rate or an alert sees the first retry or failed commit.
    pub(crate) fn started(&self, topics: &[String], group: &str) {
        for topic in topics.iter().filter(|t| !t.starts_with('^')) {
            let _ = self.retries.get_or_create(&vec![
                ("topic".to_owned(), topic.clone()),
                ("group".to_owned(), group.to_owned()),
            ]);
        }
        let _ = self
            .commit_failures
            .get_or_create(&vec![("group".to_owned(), group.to_owned())]);
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
