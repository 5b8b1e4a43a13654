//! Events whose produce ended without a verdict. A produce that timed out — the broker
//! stalled, or went away with the request already in its socket — may still have been
//! written, and the client, answered 503, retries it. So the ids of such events are kept
//! in doubt, and when a request brings one of them again the dataset's raw topic is read
//! back from when it was first tried: an event found there is remembered and answered
//! `duplicate` rather than written a second time; one not found is produced as usual.
//!
//! The doubt lives in memory: a process that dies meanwhile reads the raw topics' tails
//! at start instead (`recovery`). It is bounded: past [`MAX_IN_DOUBT`] ids of a dataset,
//! or past the idempotency window, a dataset's doubt is dropped (logged), and a retry of
//! those events may be written twice, as without this.

use std::{
    collections::{HashMap, HashSet},
    sync::Mutex,
    time::Duration,
};

use super::{ApiError, App, recovery::events_written};
use crate::{dataset::Dataset, store::Accepted};
use axum::http::StatusCode;

/// Event ids in doubt per dataset, at most.
const MAX_IN_DOUBT: usize = 100_000;
/// How long one partition may take to read back.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Read from this long before the first try: producer and broker clocks may differ a little.
const CLOCK_SLACK_MS: i64 = 5_000;

/// The events in doubt of every dataset.
#[derive(Default)]
pub(crate) struct InDoubt {
    by_dataset: Mutex<HashMap<String, Pending>>,
    /// One read-back at a time: concurrent retries of the same events wait for the first.
    resolving: tokio::sync::Mutex<()>,
}

struct Pending {
    /// When the oldest of them was first tried (ms).
    since: i64,
    ids: HashSet<String>,
}

impl InDoubt {
    /// Puts `ids`, first tried at `tried_at`, in doubt.
    pub(crate) fn add(&self, dataset: &str, tried_at: i64, ids: Vec<String>) {
        if ids.is_empty() {
            return;
        }
        let mut all = self.by_dataset.lock().expect("in-doubt lock");
        let pending = all.entry(dataset.to_owned()).or_insert_with(|| Pending {
            since: tried_at,
            ids: HashSet::new(),
        });
        pending.since = pending.since.min(tried_at);
        pending.ids.extend(ids);
        if pending.ids.len() > MAX_IN_DOUBT {
            tracing::warn!(
                dataset,
                ids = pending.ids.len(),
                "too many events in doubt: their retries may be written twice"
            );
            all.remove(dataset);
        }
    }

    /// The ids among `asked` in doubt, and since when; forgets a dataset's doubt once it is
    /// older than `window_start`.
    fn among(
        &self,
        dataset: &str,
        asked: &[Option<String>],
        window_start: i64,
    ) -> Option<(i64, Vec<String>)> {
        let mut all = self.by_dataset.lock().expect("in-doubt lock");
        let pending = all.get(dataset)?;
        if pending.since < window_start {
            all.remove(dataset);
            return None;
        }
        let ids: Vec<String> = asked
            .iter()
            .flatten()
            .filter(|id| pending.ids.contains(*id))
            .cloned()
            .collect();
        (!ids.is_empty()).then_some((pending.since, ids))
    }

    fn settle(&self, dataset: &str, ids: &[String]) {
        let mut all = self.by_dataset.lock().expect("in-doubt lock");
        if let Some(pending) = all.get_mut(dataset) {
            for id in ids {
                pending.ids.remove(id);
            }
            if pending.ids.is_empty() {
                all.remove(dataset);
            }
        }
    }
}

impl App {
    /// Of a request's event ids, those in doubt that the raw topic holds, with where; they
    /// are remembered as accepted. The rest of the ids in doubt are settled: the request
    /// produces them.
    pub(super) async fn resolve_in_doubt(
        &self,
        dataset: &Dataset,
        event_ids: &[Option<String>],
    ) -> Result<HashMap<String, Accepted>, ApiError> {
        let name = &dataset.spec.name;
        let window_start = self.window_start();
        if self.in_doubt.among(name, event_ids, window_start).is_none() {
            return Ok(HashMap::new());
        }
        let _one_at_a_time = self.in_doubt.resolving.lock().await;
        // Another request may have settled them while this one waited.
        let Some((since, doubtful)) = self.in_doubt.among(name, event_ids, window_start) else {
            return Ok(HashMap::new());
        };
        let unavailable = |e: mlops_kafka::Error| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "broker_unavailable",
                format!("events of an earlier request that got no verdict cannot be checked: {e}"),
            )
            .retry_after(1)
        };
        let topic = dataset.topic();
        let partitions = mlops_kafka::partition_count(&self.kafka, topic, READ_TIMEOUT)
            .await
            .map_err(unavailable)?;
        let wanted: HashSet<&str> = doubtful.iter().map(String::as_str).collect();
        let mut found: HashMap<String, Accepted> = HashMap::new();
        for partition in 0..partitions {
            let not_before = since - CLOCK_SLACK_MS;
            let written = events_written(&self.kafka, topic, partition, not_before, READ_TIMEOUT)
                .await
                .map_err(unavailable)?;
            for w in written {
                if wanted.contains(w.id.as_str()) {
                    found.entry(w.id).or_insert(w.accepted);
                }
            }
        }
        let remembered: Vec<(String, Accepted)> =
            found.iter().map(|(id, a)| (id.clone(), *a)).collect();
        self.store
            .remember(name, &remembered, mlops_events::now_millis())
            .await
            .map_err(super::database)?;
        self.in_doubt.settle(name, &doubtful);
        tracing::info!(
            dataset = %name,
            in_doubt = doubtful.len(),
            found = found.len(),
            "events retried after a produce without a verdict, checked against the raw topic"
        );
        Ok(found)
    }
}
