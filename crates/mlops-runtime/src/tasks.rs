//! Named, supervised tasks. The first task to fail (or to end when it should not) cancels
//! the others; a shutdown signal cancels all of them; everything gets a grace period to
//! drain before it is aborted.

use std::{future::Future, time::Duration};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a [`TaskSet`] stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum TaskError {
    #[error("task {name} failed: {source}")]
    Failed { name: String, source: BoxError },
    #[error("task {name} panicked")]
    Panicked { name: String },
    #[error("tasks did not stop within {0:?}: {1:?}")]
    Timeout(Duration, Vec<String>),
}

pub struct TaskSet {
    cancel: CancellationToken,
    tasks: JoinSet<(String, Result<(), BoxError>)>,
    names: Vec<String>,
}

impl Default for TaskSet {
    fn default() -> Self {
        Self::new(CancellationToken::new())
    }
}

impl TaskSet {
    /// Tasks stop when `cancel` fires (a parent's shutdown) or when one of them fails.
    pub fn new(cancel: CancellationToken) -> Self {
        Self {
            cancel,
            tasks: JoinSet::new(),
            names: Vec::new(),
        }
    }

    /// The token every task should watch to start draining.
    pub fn token(&self) -> CancellationToken {
        self.cancel.clone()
    }

    pub fn spawn<F, E>(&mut self, name: impl Into<String>, task: F)
    where
        F: Future<Output = Result<(), E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let name = name.into();
        self.names.push(name.clone());
        self.tasks
            .spawn(async move { (name, task.await.map_err(Into::into)) });
    }

    /// Runs until `shutdown` resolves or a task ends, then cancels everything and waits up
    /// to `grace` for the rest. Returns the first failure, if any.
    pub async fn run(
        mut self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> Result<(), TaskError> {
        let mut first_error = None;
        tokio::select! {
            () = shutdown => tracing::info!("shutdown requested, draining"),
            () = self.cancel.cancelled() => {}
            Some(joined) = self.tasks.join_next() => {
                first_error = outcome(joined);
                if first_error.is_none() {
                    tracing::info!("a task finished, stopping the others");
                }
            }
        }
        self.cancel.cancel();
        let mut finished = Vec::new();
        let drain = async {
            while let Some(joined) = self.tasks.join_next().await {
                if let Ok((name, _)) = &joined {
                    finished.push(name.clone());
                }
                let error = outcome(joined);
                if first_error.is_none() {
                    first_error = error;
                }
            }
        };
        if tokio::time::timeout(grace, drain).await.is_err() {
            self.tasks.abort_all();
            // Only the stragglers: the names of tasks that did not end in time.
            let mut stragglers = self.names;
            for name in &finished {
                if let Some(at) = stragglers.iter().position(|n| n == name) {
                    stragglers.remove(at);
                }
            }
            return Err(TaskError::Timeout(grace, stragglers));
        }
        first_error.map_or(Ok(()), Err)
    }
}

fn outcome(
    joined: Result<(String, Result<(), BoxError>), tokio::task::JoinError>,
) -> Option<TaskError> {
    match joined {
        Ok((_, Ok(()))) => None,
        Ok((name, Err(source))) => {
            tracing::error!(task = %name, error = %source, "task failed");
            Some(TaskError::Failed { name, source })
        }
        Err(e) if e.is_cancelled() => None,
        Err(_) => Some(TaskError::Panicked {
            name: "unknown".to_owned(),
        }),
    }
}

/// Resolves on the first SIGINT or SIGTERM. A second signal exits the process at once,
/// for the operator who does not want to wait for the drain.
pub async fn shutdown_signal() {
    wait_for_signal().await;
    // Not service work: a watcher for a second signal that exits the process at once.
    #[allow(clippy::disallowed_methods)]
    tokio::spawn(async {
        wait_for_signal().await;
        tracing::warn!("second signal, exiting without draining");
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("install SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn first_failure_cancels_the_others() {
        let mut set = TaskSet::default();
        let token = set.token();
        set.spawn("waits", async move {
            token.cancelled().await;
            Ok::<_, BoxError>(())
        });
        set.spawn("fails", async { Err::<(), BoxError>("boom".into()) });
        let err = set
            .run(std::future::pending(), Duration::from_secs(5))
            .await
            .unwrap_err();
        assert_eq!(err.to_string(), "task fails failed: boom");
    }

    #[tokio::test]
    async fn shutdown_drains_within_grace_or_reports_stragglers() {
        let mut set = TaskSet::default();
        let token = set.token();
        set.spawn("drains", async move {
            token.cancelled().await;
            Ok::<_, BoxError>(())
        });
        set.run(async {}, Duration::from_secs(5)).await.unwrap();

        let mut set = TaskSet::default();
        set.spawn("quick", async { Ok::<_, BoxError>(()) });
        set.spawn("stuck", async {
            std::future::pending::<()>().await;
            Ok::<_, BoxError>(())
        });
        let err = set
            .run(async {}, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, TaskError::Timeout(_, names) if names == ["stuck"]));
    }
}
