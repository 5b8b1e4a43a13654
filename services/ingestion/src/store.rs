//! What ingestion keeps: dataset definitions and the ids of accepted events, so that a
//! retried event is acknowledged again instead of produced twice — also after a restart.

use mlops_service::database::Migration;
use std::collections::HashMap;

use sqlx::{AnyPool, Row};

use crate::dataset::DatasetSpec;

/// This service's schema, version by version (portable between SQLite and PostgreSQL).
pub(crate) const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    description: "initial",
    sql: include_str!("../migrations/0001_initial.sql"),
}];

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
    /// The store on a pool opened with [`MIGRATIONS`] applied.
    pub(crate) fn new(pool: AnyPool) -> Self {
        Self { pool }
    }

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

    /// Where each of `event_ids` was written, for those accepted at or after `since`
    /// (epoch ms): one query per chunk of ids, not one per event.
    pub async fn accepted(
        &self,
        dataset: &str,
        event_ids: &[&str],
        since: i64,
    ) -> Result<HashMap<String, Accepted>> {
        let mut found = HashMap::new();
        for chunk in event_ids.chunks(ID_CHUNK) {
            let list = placeholders(3, chunk.len(), 1);
            let sql = format!(
                "SELECT event_id, partition_id, record_offset FROM ingestion_accepted
                 WHERE dataset = $1 AND accepted_at >= $2 AND event_id IN ({list})"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(dataset)
                .bind(since);
            for id in chunk {
                query = query.bind(*id);
            }
            for row in query.fetch_all(&self.pool).await? {
                found.insert(
                    row.get::<String, _>(0),
                    Accepted {
                        partition: row.get::<i64, _>(1) as i32,
                        offset: row.get(2),
                    },
                );
            }
        }
        Ok(found)
    }

    /// Remembers accepted events, replacing entries of the same ids (older than the
    /// window, or they would have been duplicates): one statement per chunk.
    pub async fn remember(
        &self,
        dataset: &str,
        events: &[(String, Accepted)],
        at: i64,
    ) -> Result<()> {
        for chunk in events.chunks(ROW_CHUNK) {
            let rows = (0..chunk.len())
                .map(|i| format!("({})", placeholders(1 + i * 5, 5, 1)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO ingestion_accepted (dataset, event_id, partition_id, record_offset, accepted_at)
                 VALUES {rows}
                 ON CONFLICT (dataset, event_id) DO UPDATE SET partition_id = excluded.partition_id,
                 record_offset = excluded.record_offset, accepted_at = excluded.accepted_at"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (event_id, accepted) in chunk {
                query = query
                    .bind(dataset)
                    .bind(event_id.as_str())
                    .bind(i64::from(accepted.partition))
                    .bind(accepted.offset)
                    .bind(at);
            }
            query.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Forgets events accepted before `before` (epoch ms): past the idempotency window
    /// they can no longer be duplicates. Returns how many were forgotten.
    /// When the latest event id of `dataset` was remembered, if any is.
    pub async fn last_accepted_at(&self, dataset: &str) -> Result<Option<i64>> {
        let row = sqlx::query(
            "SELECT MAX(accepted_at) AS last FROM ingestion_accepted WHERE dataset = $1",
        )
        .bind(dataset)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>("last")?)
    }

    pub async fn prune(&self, before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM ingestion_accepted WHERE accepted_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}

/// Ids looked up per query.
const ID_CHUNK: usize = 500;
/// Rows (5 parameters each) written per statement.
const ROW_CHUNK: usize = 200;

/// `$first, $first+1, ...` (`count` of them), for a statement's parameter list.
fn placeholders(first: usize, count: usize, step: usize) -> String {
    (0..count)
        .map(|i| format!("${}", first + i * step))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_ids_are_found_in_one_lookup_replaced_and_pruned() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::connect(&format!("sqlite://{}", dir.path().join("i.db").display()))
            .await
            .unwrap();
        let at = |partition, offset| Accepted { partition, offset };
        // More ids than one query takes, so the lookup spans chunks.
        let many: Vec<(String, Accepted)> = (0..1_200)
            .map(|i| (format!("e{i}"), at(i % 3, i64::from(i))))
            .collect();
        store.remember("d", &many, 1_000).await.unwrap();
        store.remember("other", &many[..1], 1_000).await.unwrap();
        let ids: Vec<String> = (0..1_300).map(|i| format!("e{i}")).collect();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let found = store.accepted("d", &ids, 0).await.unwrap();
        assert_eq!(found.len(), 1_200);
        assert_eq!(found["e1199"], at(2, 1_199));
        assert!(
            store.accepted("d", &ids, 1_001).await.unwrap().is_empty(),
            "outside the window"
        );

        // The same id accepted again later replaces the old entry.
        store
            .remember("d", &[("e1".into(), at(0, 5_000))], 3_000)
            .await
            .unwrap();
        assert_eq!(
            store.accepted("d", &["e1"], 2_000).await.unwrap()["e1"],
            at(0, 5_000)
        );

        // Pruning forgets what is past the window, and only that.
        assert_eq!(store.prune(2_000).await.unwrap(), 1_200);
        let left = store.accepted("d", &ids, 0).await.unwrap();
        assert_eq!(left.keys().collect::<Vec<_>>(), ["e1"]);
    }
}
