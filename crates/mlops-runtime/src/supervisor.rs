//! Jobs that must never die silently: stream jobs, and later training runs and outbox
//! publishers. Each attempt of a job runs as a task of its own, so a panic is caught like
//! an error; the job is then restarted with backoff, and its state (running, failing with
//! the last error, stopped) is visible through [`Supervisor::status`] and in `/metrics`.
//! Shutdown waits, within a grace period, for every job to finish its last attempt.

use std::{
    collections::BTreeMap,
    future::Future,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use serde::Serialize;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::tasks::BoxError;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// Where a supervised job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// An attempt is starting (restoring state, connecting).
    Starting,
    /// The current attempt is doing its work.
    Running,
    /// The last attempt failed or panicked; the job waits to restart.
    Failing,
    /// The job ended: it was stopped, or finished its work.
    Stopped,
}

/// A job's state with the evidence behind it, as the APIs show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobStatus {
    pub state: JobState,
    /// Why the last failed attempt failed (kept after recovery, for the record).
    pub last_error: Option<String>,
    pub failures: u64,
    pub panics: u64,
}

type Label = Vec<(String, String)>;

#[derive(Clone, Default)]
struct Metrics {
    failures: Family<Label, Counter>,
    panics: Family<Label, Counter>,
    failing: Family<Label, Gauge>,
}

/// Runs and restarts jobs, and reports on them.
#[derive(Clone)]
pub struct Supervisor {
    tracker: TaskTracker,
    statuses: Arc<Mutex<BTreeMap<String, JobStatus>>>,
    metrics: Metrics,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor").finish_non_exhaustive()
    }
}

/// Handed to each attempt, to say when it is doing its work again.
#[derive(Clone)]
pub struct JobReporter {
    name: String,
    supervisor: Supervisor,
    progressed: Arc<AtomicBool>,
}

impl JobReporter {
    /// The attempt is up: the job is running (until an attempt fails again).
    pub fn started(&self) {
        self.supervisor.update(&self.name, |status| {
            status.state = JobState::Running;
        });
        self.supervisor
            .metrics
            .failing
            .get_or_create(&label(&self.name))
            .set(0);
    }

    /// The attempt did a unit of work: running, and the next failure restarts it without
    /// the backoff earlier failures built up.
    pub fn progressed(&self) {
        self.progressed.store(true, Ordering::SeqCst);
        self.started();
    }
}

fn label(job: &str) -> Label {
    vec![("job".to_owned(), job.to_owned())]
}

impl Supervisor {
    /// A supervisor whose metrics are `<prefix>_failures_total`, `<prefix>_panics_total`
    /// and `<prefix>_failing` (1 while a job waits to restart), each by `job`.
    pub fn register(registry: &mut Registry, prefix: &str) -> Self {
        let supervisor = Self::unregistered();
        let metrics = &supervisor.metrics;
        registry.register(
            format!("{prefix}_failures"),
            "Failed attempts of a supervised job (each is restarted with backoff), by job",
            metrics.failures.clone(),
        );
        registry.register(
            format!("{prefix}_panics"),
            "Attempts of a supervised job that panicked (counted in failures too), by job",
            metrics.panics.clone(),
        );
        registry.register(
            format!("{prefix}_failing"),
            "1 while a supervised job's last attempt failed and it waits to restart, by job",
            metrics.failing.clone(),
        );
        supervisor
    }

    /// A supervisor that reports nowhere but [`Supervisor::status`].
    pub fn unregistered() -> Self {
        Self {
            tracker: TaskTracker::new(),
            statuses: Arc::default(),
            metrics: Metrics::default(),
        }
    }

    fn update(&self, name: &str, change: impl FnOnce(&mut JobStatus)) {
        if let Ok(mut statuses) = self.statuses.lock() {
            let status = statuses.entry(name.to_owned()).or_insert(JobStatus {
                state: JobState::Starting,
                last_error: None,
                failures: 0,
                panics: 0,
            });
            change(status);
        }
    }

    /// The state of job `name`, if it was ever started.
    pub fn status(&self, name: &str) -> Option<JobStatus> {
        self.statuses.lock().ok()?.get(name).cloned()
    }

    /// Runs `attempt` until it returns `Ok` or `cancel` fires; after an error or a panic
    /// it is called again, with backoff (200 ms doubling to 10 s, reset once an attempt
    /// reports progress). Each attempt must itself stop when `cancel` fires.
    pub fn spawn<F, Fut, E>(
        &self,
        name: impl Into<String>,
        cancel: CancellationToken,
        mut attempt: F,
    ) where
        F: FnMut(JobReporter) -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError> + Send + 'static,
    {
        let name = name.into();
        let supervisor = self.clone();
        supervisor.update(&name, |status| status.state = JobState::Starting);
        // Every job's series exist from its start (at 0), so a rate or an alert sees the
        // first failure rather than a series appearing.
        let job = label(&name);
        let _ = supervisor.metrics.failures.get_or_create(&job);
        let _ = supervisor.metrics.panics.get_or_create(&job);
        let _ = supervisor.metrics.failing.get_or_create(&job);
        self.tracker.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                let reporter = JobReporter {
                    name: name.clone(),
                    supervisor: supervisor.clone(),
                    progressed: Arc::default(),
                };
                let progressed = reporter.progressed.clone();
                // The supervisor is the wrapper: each attempt is a task so a panic is caught.
                #[allow(clippy::disallowed_methods)]
                let outcome = tokio::spawn(attempt(reporter)).await;
                let (error, panicked) = match outcome {
                    Ok(Ok(())) => break,
                    Ok(Err(e)) => (format!("{}", e.into()), false),
                    Err(e) if e.is_panic() => (panic_message(e.into_panic()), true),
                    Err(_) => break,
                };
                if progressed.load(Ordering::SeqCst) {
                    backoff = FIRST_BACKOFF;
                }
                let job = label(&name);
                supervisor.metrics.failures.get_or_create(&job).inc();
                if panicked {
                    supervisor.metrics.panics.get_or_create(&job).inc();
                }
                supervisor.metrics.failing.get_or_create(&job).set(1);
                supervisor.update(&name, |status| {
                    status.state = JobState::Failing;
                    status.last_error = Some(error.clone());
                    status.failures += 1;
                    status.panics += u64::from(panicked);
                });
                tracing::warn!(job = %name, error = %error, panicked, retry_in_ms = backoff.as_millis() as u64, "supervised job failed; restarting");
                tokio::select! {
                    () = cancel.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
            supervisor.update(&name, |status| status.state = JobState::Stopped);
        });
    }

    /// Waits until every job has ended (their cancel tokens must have fired), at most
    /// `grace`; false when some did not stop in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.tracker.close();
        tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok()
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a non-text payload".to_owned());
    format!("panicked: {text}")
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use super::*;

    async fn wait_for(supervisor: &Supervisor, name: &str, wanted: impl Fn(&JobStatus) -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if supervisor.status(name).is_some_and(|s| wanted(&s)) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{name}: {:?}",
                supervisor.status(name)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn a_panicking_job_is_counted_shown_and_restarted() {
        let mut registry = Registry::default();
        let supervisor = Supervisor::register(&mut registry, "test_job");
        let cancel = CancellationToken::new();
        let attempts = Arc::new(AtomicU32::new(0));
        let counted = attempts.clone();
        let token = cancel.clone();
        supervisor.spawn("view", cancel.clone(), move |reporter| {
            let n = counted.fetch_add(1, Ordering::SeqCst);
            let token = token.clone();
            async move {
                if n == 0 {
                    panic!("index out of bounds");
                }
                reporter.started();
                token.cancelled().await;
                Ok::<_, BoxError>(())
            }
        });
        wait_for(&supervisor, "view", |s| s.state == JobState::Running).await;
        let status = supervisor.status("view").unwrap();
        assert_eq!(status.panics, 1);
        assert_eq!(status.failures, 1);
        assert_eq!(
            status.last_error.as_deref(),
            Some("panicked: index out of bounds")
        );
        assert_eq!(attempts.load(Ordering::SeqCst), 2);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(
            text.contains("test_job_panics_total{job=\"view\"} 1"),
            "{text}"
        );
        assert!(text.contains("test_job_failing{job=\"view\"} 0"), "{text}");

        cancel.cancel();
        assert!(supervisor.drain(Duration::from_secs(5)).await);
        assert_eq!(supervisor.status("view").unwrap().state, JobState::Stopped);
    }

    #[tokio::test]
    async fn a_failing_job_shows_its_error_until_cancelled_and_drain_waits_for_it() {
        let supervisor = Supervisor::unregistered();
        let cancel = CancellationToken::new();
        supervisor.spawn("broken", cancel.clone(), |_| async {
            Err::<(), BoxError>("cannot start: the store is unreachable".into())
        });
        wait_for(&supervisor, "broken", |s| s.failures >= 2).await;
        let status = supervisor.status("broken").unwrap();
        assert_eq!(status.state, JobState::Failing);
        assert_eq!(
            status.last_error.as_deref(),
            Some("cannot start: the store is unreachable")
        );

        // A job draining on cancel holds the drain until it is done.
        let finished = Arc::new(AtomicBool::new(false));
        let done = finished.clone();
        let token = cancel.clone();
        supervisor.spawn("draining", cancel.clone(), move |_| {
            let (token, done) = (token.clone(), done.clone());
            async move {
                token.cancelled().await;
                tokio::time::sleep(Duration::from_millis(100)).await;
                done.store(true, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        });
        cancel.cancel();
        assert!(supervisor.drain(Duration::from_secs(5)).await);
        assert!(
            finished.load(Ordering::SeqCst),
            "drain returned before the job's last step"
        );
    }
}
