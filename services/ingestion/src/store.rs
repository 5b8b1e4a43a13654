//! What ingestion keeps: dataset definitions and the ids of accepted events, so that a
//! retried event is acknowledged again instead of produced twice — also after a restart.

use sqlx::{AnyPool, Row};

use crate::dataset::DatasetSpec;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS ingestion_datasets (
        name TEXT PRIMARY KEY,
        spec TEXT NOT NULL,
        schema_id BIGINT NOT NULL,
        version BIGINT NOT NULL
    )",
    "CREATE TABLE IF NOT EXISTS ingestion_accepted (
        dataset TEXT NOT NULL,
        event_id TEXT NOT NULL,
        partition_id BIGINT NOT NULL,
        record_offset BIGINT NOT NULL,
        accepted_at BIGINT NOT NULL,
        PRIMARY KEY (dataset, event_id)
    )",
];

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Connect(#[from] mlops_service::database::DatabaseError),
    #[error("stored dataset {0} is unreadable: {1}")]
    Corrupt(String, serde_json::Error),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where an accepted event was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub partition: i32,
    pub offset: i64,
}

#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
}

impl Store {
    pub async fn connect(url: &str) -> Result<Self> {
        let pool = mlops_service::database::connect(url, MIGRATIONS).await?;
        Ok(Self { pool })
    }

    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub async fn save_dataset(
        &self,
        spec: &DatasetSpec,
        schema_id: u32,
        version: i64,
    ) -> Result<()> {
        let text =
            serde_json::to_string(spec).map_err(|e| StoreError::Corrupt(spec.name.clone(), e))?;
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM ingestion_datasets WHERE name = $1")
            .bind(&spec.name)
            .execute(&mut *tx)
            .await?;
        sqlx::query("INSERT INTO ingestion_datasets (name, spec, schema_id, version) VALUES ($1, $2, $3, $4)")
            .bind(&spec.name)
            .bind(text)
            .bind(i64::from(schema_id))
            .bind(version)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Every dataset with its schema id and version.
    pub async fn datasets(&self) -> Result<Vec<(DatasetSpec, u32, i64)>> {
        let rows = sqlx::query(
            "SELECT name, spec, schema_id, version FROM ingestion_datasets ORDER BY name",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                let name: String = row.get(0);
                let spec: DatasetSpec = serde_json::from_str(&row.get::<String, _>(1))
                    .map_err(|e| StoreError::Corrupt(name, e))?;
                Ok((spec, row.get::<i64, _>(2) as u32, row.get(3)))
            })
            .collect()
    }

    /// Where `event_id` was written, if it was accepted at or after `since` (epoch ms).
    pub async fn accepted(
        &self,
        dataset: &str,
        event_id: &str,
        since: i64,
    ) -> Result<Option<Accepted>> {
        let row = sqlx::query(
            "SELECT partition_id, record_offset FROM ingestion_accepted
             WHERE dataset = $1 AND event_id = $2 AND accepted_at >= $3",
        )
        .bind(dataset)
        .bind(event_id)
        .bind(since)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| Accepted {
            partition: r.get::<i64, _>(0) as i32,
            offset: r.get(1),
        }))
    }

    /// Remembers accepted events (replacing entries older than the window).
    pub async fn remember(
        &self,
        dataset: &str,
        events: &[(String, Accepted)],
        at: i64,
    ) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (event_id, accepted) in events {
            sqlx::query("DELETE FROM ingestion_accepted WHERE dataset = $1 AND event_id = $2")
                .bind(dataset)
                .bind(event_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO ingestion_accepted (dataset, event_id, partition_id, record_offset, accepted_at)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(dataset)
            .bind(event_id)
            .bind(i64::from(accepted.partition))
            .bind(accepted.offset)
            .bind(at)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
