//! CPU-heavy work — polars queries, Parquet encoding and decoding, converting large
//! request bodies — runs here, off the async workers, so that `/healthz`, `/readyz`,
//! online lookups and Kafka heartbeats stay prompt while a view recomputes or a training
//! set is built. Tokio's blocking pool alone is unbounded (up to 512 threads), so a
//! semaphore sized to the machine's cores admits one task per core; the rest wait their
//! turn without holding a thread.

use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

/// The cores this process may use (1 when that cannot be known).
pub fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn permits() -> &'static Arc<Semaphore> {
    static PERMITS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    PERMITS.get_or_init(|| Arc::new(Semaphore::new(cores())))
}

/// Runs `work` on the blocking pool, at most one task per core at a time, inside the
/// caller's tracing span. A panic in `work` resumes in the caller, where a supervisor
/// counts it like any other.
pub async fn run<T, F>(work: F) -> T
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let permit = permits()
        .clone()
        .acquire_owned()
        .await
        .expect("the CPU pool's semaphore is never closed");
    let span = tracing::Span::current();
    let task = tokio::task::spawn_blocking(move || {
        let _permit = permit;
        span.in_scope(work)
    });
    match task.await {
        Ok(value) => value,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // Only a runtime shutting down cancels a blocking task that has started.
        Err(e) => panic!("CPU task did not finish: {e}"),
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // tests drive the pool from plain tasks
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn the_async_thread_stays_free_while_cpu_work_runs() {
        // One async thread: the work can only be released by this task if it runs
        // elsewhere. Run inline, it would wait out its 10 s and report it was never released.
        let (release, released) = std::sync::mpsc::channel::<()>();
        let work = tokio::spawn(run(move || {
            released.recv_timeout(Duration::from_secs(10)).is_ok()
        }));
        tokio::task::yield_now().await;
        release.send(()).unwrap();
        assert!(work.await.unwrap(), "the work held the only async thread");
    }

    #[tokio::test]
    async fn a_panic_in_the_work_reaches_the_caller() {
        let caught = tokio::spawn(run(|| panic!("boom"))).await;
        let panic = caught.expect_err("the panic resumes in the caller");
        assert!(panic.is_panic());
    }
}
