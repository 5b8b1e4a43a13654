//! The training service's records (`sqlx::Any`: SQLite by default, PostgreSQL by URL):
//! model specs, runs and the requests each run answers. A request is recorded the moment
//! it arrives and joins the model's pending or running run if there is one, so a burst
//! becomes one run that lists every request; a run left `running` by a restart is put
//! back to `pending` and run again (results are deterministic), or failed after
//! [`MAX_ATTEMPTS`] starts cut short that way; a run whose attempt stopped on a transient
//! failure waits as `pending` too, with the reason.

use mlops_events::{TrainingReason, TrainingRequest};
use mlops_service::database::Migration;
use serde_json::Value as Json;
use sqlx::{AnyPool, Row, any::AnyRow};

use crate::spec::ModelSpec;

pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "run traceparent",
        sql: include_str!("../migrations/0002_run_traceparent.sql"),
    },
    Migration {
        version: 3,
        description: "run last error",
        sql: include_str!("../migrations/0003_run_last_error.sql"),
    },
];

/// Starts of one run before a restart-interrupted run is given up as failed.
pub const MAX_ATTEMPTS: i64 = 3;

/// Starts of one run before one that keeps stopping on a transient failure (a peer
/// restarting or catching up) is given up as failed.
pub const MAX_TRANSIENT_ATTEMPTS: i64 = 6;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Connect(#[from] mlops_service::database::DatabaseError),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// A run as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: String,
    pub model: String,
    pub status: String,
    pub created_at: i64,
    pub not_before: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempts: i64,
    pub record: Option<Json>,
    pub published: bool,
    pub trace_id: Option<String>,
    /// The span the run's first request arrived in (W3C), parent of the run's span.
    pub traceparent: Option<String>,
    /// Why its last attempt stopped short, while it waits to be tried again.
    pub last_error: Option<String>,
    /// Starts that stopped short on a transient failure (of `attempts`).
    pub retries: i64,
}

/// A request as recorded with its run.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestRow {
    pub request_id: String,
    pub reason: String,
    pub triggering_event_id: Option<String>,
    pub requested_by: String,
    pub requested_at: i64,
    pub window_start: Option<i64>,
    pub window_end: Option<i64>,
}

pub fn reason_name(reason: TrainingReason) -> &'static str {
    match reason {
        TrainingReason::Manual => "manual",
        TrainingReason::Schedule => "schedule",
        TrainingReason::Drift => "drift",
        TrainingReason::NewData => "new_data",
    }
}

const RUN_COLUMNS: &str = "id, model, status, created_at, not_before, started_at, finished_at, \
     attempts, record, published, trace_id, traceparent, last_error, retries";

fn run_row(row: &AnyRow) -> Result<RunRow> {
    let record: Option<String> = row.try_get("record")?;
    let published: i64 = row.try_get("published")?;
    Ok(RunRow {
        id: row.try_get("id")?,
        model: row.try_get("model")?,
        status: row.try_get("status")?,
        created_at: row.try_get("created_at")?,
        not_before: row.try_get("not_before")?,
        started_at: row.try_get("started_at")?,
        finished_at: row.try_get("finished_at")?,
        attempts: row.try_get("attempts")?,
        record: record
            .map(|r| serde_json::from_str(&r))
            .transpose()
            .map_err(|e| StoreError::Corrupt(format!("run record: {e}")))?,
        published: published != 0,
        trace_id: row.try_get("trace_id")?,
        traceparent: row.try_get("traceparent")?,
        last_error: row.try_get("last_error")?,
        retries: row.try_get("retries")?,
    })
}

#[derive(Debug, Clone)]
pub struct TrainingStore {
    pool: AnyPool,
}

impl TrainingStore {
    /// The store on a pool opened with [`MIGRATIONS`] applied.
    pub(crate) fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    pub async fn connect(url: &str) -> Result<Self> {
        Ok(Self {
            pool: mlops_service::database::connect(url, MIGRATIONS).await?,
        })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn put_spec(&self, spec: &ModelSpec) -> Result<bool> {
        let text = serde_json::to_string(spec).unwrap_or_default();
        let existed = sqlx::query("SELECT 1 FROM specs WHERE name = $1")
            .bind(&spec.name)
            .fetch_optional(&self.pool)
            .await?
            .is_some();
        sqlx::query(
            "INSERT INTO specs (name, spec, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
        )
        .bind(&spec.name)
        .bind(text)
        .bind(mlops_events::now_millis())
        .execute(&self.pool)
        .await?;
        Ok(existed)
    }

    pub async fn specs(&self) -> Result<Vec<ModelSpec>> {
        let rows = sqlx::query("SELECT spec FROM specs ORDER BY name")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let text: String = r.try_get(0)?;
                let tree = serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("spec: {e}")))?;
                ModelSpec::from_json(tree).map_err(|e| StoreError::Corrupt(format!("spec: {e:?}")))
            })
            .collect()
    }

    /// Records `request` and attaches it to the model's pending or running run, creating a
    /// pending one (not starting before `not_before`) when there is none. A request seen
    /// before (same id) changes nothing. Returns the run's id.
    pub async fn attach(&self, request: &TrainingRequest, not_before: i64) -> Result<String> {
        let mut tx = self.pool.begin().await?;
        if let Some(row) = sqlx::query("SELECT run_id FROM run_requests WHERE request_id = $1")
            .bind(&request.request_id)
            .fetch_optional(&mut *tx)
            .await?
        {
            return Ok(row.try_get(0)?);
        }
        let active: Option<String> = sqlx::query(
            "SELECT id FROM runs WHERE model = $1 AND status IN ('pending', 'running') \
             ORDER BY created_at LIMIT 1",
        )
        .bind(&request.model_name)
        .fetch_optional(&mut *tx)
        .await?
        .map(|r| r.try_get(0))
        .transpose()?;
        let now = mlops_events::now_millis();
        let run_id = match active {
            Some(id) => id,
            None => {
                let id = mlops_events::new_id();
                // The run continues the flow of the request that opened it, as a child of
                // the span the request arrived in.
                let flow = mlops_telemetry::flow_here(request.trace_id.as_deref());
                sqlx::query(
                    "INSERT INTO runs (id, model, status, created_at, not_before, trace_id, \
                     traceparent) VALUES ($1, $2, 'pending', $3, $4, $5, $6)",
                )
                .bind(&id)
                .bind(&request.model_name)
                .bind(now)
                .bind(not_before)
                .bind(&flow.trace_id)
                .bind(&flow.traceparent)
                .execute(&mut *tx)
                .await?;
                id
            }
        };
        sqlx::query(
            "INSERT INTO run_requests (request_id, run_id, model, reason, triggering_event_id, \
             requested_by, requested_at, received_at, window_start, window_end) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(&request.request_id)
        .bind(&run_id)
        .bind(&request.model_name)
        .bind(reason_name(request.reason))
        .bind(&request.triggering_event_id)
        .bind(&request.requested_by)
        .bind(request.requested_at)
        .bind(now)
        .bind(request.window_start)
        .bind(request.window_end)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(run_id)
    }

    /// When the newest request of `model` for `reason` was made, if any.
    pub async fn last_request(&self, model: &str, reason: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(requested_at) FROM run_requests WHERE model = $1 AND reason = $2",
        )
        .bind(model)
        .bind(reason)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// When the last finished run of `model` ended, if any.
    pub async fn last_finished(&self, model: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MAX(finished_at) FROM runs WHERE model = $1")
            .bind(model)
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Pending runs whose time has come, oldest first.
    pub async fn due(&self, now: i64) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'pending' AND not_before <= $1 \
             ORDER BY not_before, created_at"
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// The earliest start time of a pending run not yet due.
    pub async fn next_due(&self) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(not_before) FROM runs WHERE status = 'pending'")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Moves a pending run to running; `false` when it was not pending any more.
    pub async fn start(&self, id: &str, now: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'running', started_at = $1, attempts = attempts + 1 \
             WHERE id = $2 AND status = 'pending'",
        )
        .bind(now)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Puts a running run back to pending, due at `not_before`, with why its attempt
    /// stopped short; `false` when it was not running.
    pub async fn retry_later(&self, id: &str, reason: &str, not_before: i64) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE runs SET status = 'pending', not_before = $1, last_error = $2, \
             retries = retries + 1 WHERE id = $3 AND status = 'running'",
        )
        .bind(not_before)
        .bind(reason)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    pub async fn finish(&self, id: &str, status: &str, record: &Json, now: i64) -> Result<()> {
        sqlx::query("UPDATE runs SET status = $1, record = $2, finished_at = $3 WHERE id = $4")
            .bind(status)
            .bind(record.to_string())
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn mark_published(&self, id: &str) -> Result<()> {
        sqlx::query("UPDATE runs SET published = 1 WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Finished runs whose result has not reached `training.runs` yet.
    pub async fn unpublished(&self) -> Result<Vec<RunRow>> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE published = 0 AND finished_at IS NOT NULL \
             ORDER BY finished_at"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_row).collect()
    }

    /// After a restart: runs left `running` go back to `pending` (due now), or fail once
    /// [`MAX_ATTEMPTS`] of their starts were cut short by a restart (starts that stopped on
    /// a transient failure do not count). Returns (resumed, failed) run ids.
    pub async fn recover(&self, now: i64) -> Result<(Vec<String>, Vec<String>)> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE status = 'running'"
        )))
        .fetch_all(&self.pool)
        .await?;
        let (mut resumed, mut failed) = (Vec::new(), Vec::new());
        for run in rows.iter().map(run_row) {
            let run = run?;
            let interrupted = run.attempts - run.retries;
            if interrupted >= MAX_ATTEMPTS {
                let record = serde_json::json!({
                    "id": run.id, "model": run.model, "status": "failed",
                    "reason": format!("interrupted by a restart {interrupted} times; given up"),
                });
                self.finish(&run.id, "failed", &record, now).await?;
                failed.push(run.id);
            } else {
                sqlx::query("UPDATE runs SET status = 'pending', not_before = $1 WHERE id = $2")
                    .bind(now)
                    .bind(&run.id)
                    .execute(&self.pool)
                    .await?;
                resumed.push(run.id);
            }
        }
        Ok((resumed, failed))
    }

    pub async fn run(&self, id: &str) -> Result<Option<RunRow>> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {RUN_COLUMNS} FROM runs WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(run_row).transpose()
    }

    /// Runs, newest first, of `model` or of every model.
    pub async fn runs(&self, model: Option<&str>, limit: i64) -> Result<Vec<RunRow>> {
        let rows = match model {
            Some(model) => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs WHERE model = $1 \
                     ORDER BY created_at DESC LIMIT $2"
                )))
                .bind(model)
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "SELECT {RUN_COLUMNS} FROM runs ORDER BY created_at DESC LIMIT $1"
                )))
                .bind(limit)
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(run_row).collect()
    }

    /// The requests `run` answers, in arrival order.
    pub async fn requests(&self, run: &str) -> Result<Vec<RequestRow>> {
        let rows = sqlx::query(
            "SELECT request_id, reason, triggering_event_id, requested_by, requested_at, \
             window_start, window_end FROM run_requests WHERE run_id = $1 \
             ORDER BY received_at, request_id",
        )
        .bind(run)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(RequestRow {
                    request_id: r.try_get(0)?,
                    reason: r.try_get(1)?,
                    triggering_event_id: r.try_get(2)?,
                    requested_by: r.try_get(3)?,
                    requested_at: r.try_get(4)?,
                    window_start: r.try_get(5)?,
                    window_end: r.try_get(6)?,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(id: &str, model: &str) -> TrainingRequest {
        TrainingRequest {
            request_id: id.to_owned(),
            model_name: model.to_owned(),
            reason: TrainingReason::Drift,
            window_start: None,
            window_end: None,
            triggering_event_id: Some(format!("drift-{id}")),
            requested_by: "monitoring".into(),
            requested_at: 0,
            trace_id: None,
        }
    }

    async fn store() -> (TrainingStore, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("training.db").display());
        (TrainingStore::connect(&url).await.unwrap(), dir)
    }

    #[tokio::test]
    async fn requests_join_the_pending_or_running_run_of_their_model_once() {
        let (store, _dir) = store().await;
        let run = store.attach(&request("a", "fraud"), 10).await.unwrap();
        assert_eq!(store.attach(&request("b", "fraud"), 99).await.unwrap(), run);
        // The same request again (a redelivery) changes nothing.
        assert_eq!(store.attach(&request("a", "fraud"), 99).await.unwrap(), run);
        let other = store.attach(&request("c", "churn"), 10).await.unwrap();
        assert_ne!(other, run);
        let ids: Vec<String> = store
            .requests(&run)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.request_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        // Not due before its cooldown; due after.
        assert!(store.due(9).await.unwrap().is_empty());
        assert_eq!(store.due(10).await.unwrap().len(), 2);
        // A running run still collects requests; a finished one does not.
        assert!(store.start(&run, 11).await.unwrap());
        assert!(!store.start(&run, 11).await.unwrap(), "started once");
        assert_eq!(store.attach(&request("d", "fraud"), 99).await.unwrap(), run);
        store
            .finish(&run, "succeeded", &serde_json::json!({}), 12)
            .await
            .unwrap();
        let next = store.attach(&request("e", "fraud"), 99).await.unwrap();
        assert_ne!(next, run);
        assert_eq!(store.last_finished("fraud").await.unwrap(), Some(12));
    }

    #[tokio::test]
    async fn a_run_stopped_by_a_transient_failure_waits_with_its_reason_and_keeps_its_requests() {
        let (store, _dir) = store().await;
        let run = store.attach(&request("a", "fraud"), 0).await.unwrap();
        assert!(store.start(&run, 1).await.unwrap());
        assert!(
            store
                .retry_later(&run, "feature view behind", 5_000)
                .await
                .unwrap()
        );
        let row = store.run(&run).await.unwrap().unwrap();
        assert_eq!(
            (row.status.as_str(), row.not_before, row.attempts),
            ("pending", 5_000, 1)
        );
        assert_eq!(row.last_error.as_deref(), Some("feature view behind"));
        assert!(
            store.due(4_999).await.unwrap().is_empty(),
            "not before its backoff"
        );
        // Requests arriving meanwhile still join it, and it starts again once due.
        assert_eq!(store.attach(&request("b", "fraud"), 0).await.unwrap(), run);
        assert_eq!(store.due(5_000).await.unwrap().len(), 1);
        assert!(store.start(&run, 5_000).await.unwrap());
        assert_eq!(store.requests(&run).await.unwrap().len(), 2);
        // A start cut short by a restart after two that stopped short is its first such:
        // resumed, not given up.
        assert!(
            store
                .retry_later(&run, "still behind", 5_000)
                .await
                .unwrap()
        );
        assert!(store.start(&run, 5_000).await.unwrap());
        let (resumed, failed) = store.recover(6_000).await.unwrap();
        assert_eq!((resumed, failed), (vec![run.clone()], vec![]));
        assert_eq!(store.run(&run).await.unwrap().unwrap().attempts, 3);
        assert!(store.start(&run, 6_000).await.unwrap());
        // Only a running run is put back.
        store
            .finish(&run, "succeeded", &serde_json::json!({}), 6_000)
            .await
            .unwrap();
        assert!(!store.retry_later(&run, "late", 7_000).await.unwrap());
    }

    #[tokio::test]
    async fn a_run_cut_short_by_a_restart_is_resumed_then_failed_after_three_starts() {
        let (store, _dir) = store().await;
        let run = store.attach(&request("a", "fraud"), 0).await.unwrap();
        for attempt in 1..=MAX_ATTEMPTS {
            assert!(store.start(&run, attempt).await.unwrap());
            let (resumed, failed) = store.recover(100 + attempt).await.unwrap();
            if attempt < MAX_ATTEMPTS {
                assert_eq!((resumed, failed), (vec![run.clone()], vec![]));
                let row = store.run(&run).await.unwrap().unwrap();
                assert_eq!(
                    (row.status.as_str(), row.not_before),
                    ("pending", 100 + attempt)
                );
            } else {
                assert_eq!((resumed, failed), (vec![], vec![run.clone()]));
            }
        }
        let row = store.run(&run).await.unwrap().unwrap();
        assert_eq!(row.status, "failed");
        assert_eq!(row.attempts, MAX_ATTEMPTS);
        let reason = row.record.unwrap()["reason"].as_str().unwrap().to_owned();
        assert!(
            reason.contains("interrupted by a restart 3 times"),
            "{reason}"
        );
        // Its result still goes out: the run is finished and unpublished.
        assert_eq!(store.unpublished().await.unwrap().len(), 1);
    }
}
