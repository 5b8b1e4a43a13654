//! Schema Registry storage through `sqlx::Any`: the same SQL runs on SQLite (embedded
//! default) and PostgreSQL (production). Ids are assigned inside write transactions, so
//! no database-specific auto-increment is needed.

use mlops_service::database::Migration;
use sqlx::{AnyPool, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Connect(#[from] mlops_service::database::DatabaseError),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// This service's schema, version by version (portable between SQLite and PostgreSQL).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "models",
        sql: include_str!("../migrations/0002_models.sql"),
    },
    Migration {
        version: 3,
        description: "audit",
        sql: include_str!("../migrations/0003_audit.sql"),
    },
    Migration {
        version: 4,
        description: "transition traceparent",
        sql: include_str!("../migrations/0004_transition_traceparent.sql"),
    },
    Migration {
        version: 5,
        description: "version training run",
        sql: include_str!("../migrations/0005_version_training_run.sql"),
    },
];

/// The key under which the global compatibility level is stored.
const GLOBAL: &str = "__GLOBAL";

/// One version of a subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectVersion {
    pub subject: String,
    pub version: i64,
    pub id: i64,
    pub schema: String,
    pub deleted: bool,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    /// The store on a pool opened with [`MIGRATIONS`] applied.
    pub(crate) fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

    /// Connects (creating the SQLite file and its directory when needed) and migrates.
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = mlops_service::database::connect(url, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    /// The connection pool, shared with the model registry's store.
    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Subjects with at least one live version (or any version when `deleted`).
    pub async fn subjects(&self, deleted: bool) -> Result<Vec<String>> {
        let rows = sqlx::query(
            "SELECT DISTINCT subject FROM sr_versions WHERE deleted = 0 OR $1 = 1 ORDER BY subject",
        )
        .bind(i64::from(deleted))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| r.get::<String, _>(0)).collect())
    }

    /// Versions of a subject, oldest first, live only unless `deleted`.
    pub async fn versions(&self, subject: &str, deleted: bool) -> Result<Vec<SubjectVersion>> {
        let rows = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text, v.deleted
             FROM sr_versions v JOIN sr_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND (v.deleted = 0 OR $2 = 1)
             ORDER BY v.version",
        )
        .bind(subject)
        .bind(i64::from(deleted))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| SubjectVersion {
                subject: subject.to_owned(),
                version: r.get(0),
                id: r.get(1),
                schema: r.get(2),
                deleted: r.get::<i64, _>(3) != 0,
            })
            .collect())
    }

    pub async fn schema_by_id(&self, id: i64) -> Result<Option<(String, String)>> {
        let row = sqlx::query("SELECT schema_type, schema_text FROM sr_schemas WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| (r.get(0), r.get(1))))
    }

    /// Live (subject, version) pairs that use schema `id`.
    pub async fn usages(&self, id: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT subject, version FROM sr_versions WHERE schema_id = $1 AND deleted = 0
             ORDER BY subject, version",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    /// Registers `schema_text` (already canonical, identified by `hash`) as the next
    /// version of `subject`, after `approve` accepts the live versions. Returns the id and
    /// whether a new version was created. Everything happens in one transaction.
    ///
    /// Concurrent registrations (READ COMMITTED on PostgreSQL) can read the same next id or
    /// version; the later insert then hits a unique key. That transaction is run again
    /// from the start, so it sees the winner's rows: its id is fresh, its version next,
    /// and `approve` judges it against the winner too.
    pub async fn register<E>(
        &self,
        subject: &str,
        hash: &str,
        schema_type: &str,
        schema_text: &str,
        approve: impl Fn(&[SubjectVersion]) -> Result<(), E>,
    ) -> Result<Result<(i64, bool), E>> {
        let mut conflicts = 0;
        loop {
            match self
                .register_once(subject, hash, schema_type, schema_text, &approve)
                .await
            {
                Err(StoreError::Database(e)) if is_unique_violation(&e) && conflicts < 50 => {
                    conflicts += 1;
                    tracing::debug!(subject, conflicts, "concurrent registration, retrying");
                }
                outcome => return outcome,
            }
        }
    }

    async fn register_once<E>(
        &self,
        subject: &str,
        hash: &str,
        schema_type: &str,
        schema_text: &str,
        approve: &impl Fn(&[SubjectVersion]) -> Result<(), E>,
    ) -> Result<Result<(i64, bool), E>> {
        let mut tx = self.pool.begin().await?;
        let existing = sqlx::query(
            "SELECT v.schema_id FROM sr_versions v JOIN sr_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND v.deleted = 0 AND s.hash = $2",
        )
        .bind(subject)
        .bind(hash)
        .fetch_optional(&mut *tx)
        .await?;
        if let Some(row) = existing {
            return Ok(Ok((row.get(0), false)));
        }
        let rows = sqlx::query(
            "SELECT v.version, v.schema_id, s.schema_text FROM sr_versions v
             JOIN sr_schemas s ON s.id = v.schema_id
             WHERE v.subject = $1 AND v.deleted = 0 ORDER BY v.version",
        )
        .bind(subject)
        .fetch_all(&mut *tx)
        .await?;
        let live: Vec<SubjectVersion> = rows
            .iter()
            .map(|r| SubjectVersion {
                subject: subject.to_owned(),
                version: r.get(0),
                id: r.get(1),
                schema: r.get(2),
                deleted: false,
            })
            .collect();
        if let Err(rejection) = approve(&live) {
            return Ok(Err(rejection));
        }
        let id: i64 = match sqlx::query("SELECT id FROM sr_schemas WHERE hash = $1")
            .bind(hash)
            .fetch_optional(&mut *tx)
            .await?
        {
            Some(row) => row.get(0),
            None => {
                let next: i64 = sqlx::query("SELECT COALESCE(MAX(id), 0) + 1 FROM sr_schemas")
                    .fetch_one(&mut *tx)
                    .await?
                    .get(0);
                sqlx::query(
                    "INSERT INTO sr_schemas (id, hash, schema_type, schema_text) VALUES ($1, $2, $3, $4)",
                )
                .bind(next)
                .bind(hash)
                .bind(schema_type)
                .bind(schema_text)
                .execute(&mut *tx)
                .await?;
                next
            }
        };
        let version: i64 =
            sqlx::query("SELECT COALESCE(MAX(version), 0) + 1 FROM sr_versions WHERE subject = $1")
                .bind(subject)
                .fetch_one(&mut *tx)
                .await?
                .get(0);
        sqlx::query(
            "INSERT INTO sr_versions (subject, version, schema_id, deleted) VALUES ($1, $2, $3, 0)",
        )
        .bind(subject)
        .bind(version)
        .bind(id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok((id, true)))
    }

    /// Soft-deletes (or, when `permanent`, removes) versions; returns those affected.
    pub async fn delete_versions(
        &self,
        subject: &str,
        versions: &[i64],
        permanent: bool,
    ) -> Result<()> {
        let mut tx = self.pool.begin().await?;
        for version in versions {
            let statement = if permanent {
                "DELETE FROM sr_versions WHERE subject = $1 AND version = $2"
            } else {
                "UPDATE sr_versions SET deleted = 1 WHERE subject = $1 AND version = $2"
            };
            sqlx::query(statement)
                .bind(subject)
                .bind(*version)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The compatibility level set for `subject`, or the global one when `subject` is None.
    pub async fn compatibility(&self, subject: Option<&str>) -> Result<Option<String>> {
        let row = sqlx::query("SELECT compatibility FROM sr_config WHERE subject = $1")
            .bind(subject.unwrap_or(GLOBAL))
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.get(0)))
    }

    pub async fn set_compatibility(&self, subject: Option<&str>, level: &str) -> Result<()> {
        let key = subject.unwrap_or(GLOBAL);
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM sr_config WHERE subject = $1")
            .bind(key)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO sr_config (subject, compatibility) VALUES ($1, $2)")
            .bind(key)
            .bind(level)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn clear_compatibility(&self, subject: &str) -> Result<bool> {
        let done = sqlx::query("DELETE FROM sr_config WHERE subject = $1")
            .bind(subject)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() > 0)
    }
}

fn is_unique_violation(error: &sqlx::Error) -> bool {
    error
        .as_database_error()
        .is_some_and(|e| e.is_unique_violation())
}
