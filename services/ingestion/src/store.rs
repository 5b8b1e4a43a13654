//! What ingestion keeps: dataset definitions and the ids of accepted events, so that a
//! retried event is acknowledged again instead of produced twice — also after a restart.

use mlops_service::database::Migration;
use std::collections::HashMap;

use sha2::{Digest, Sha256};
use sqlx::{AnyPool, Row};

use crate::dataset::DatasetSpec;

/// This service's schema, version by version (portable between SQLite and PostgreSQL).
pub(crate) const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        description: "initial",
        sql: include_str!("../migrations/0001_initial.sql"),
    },
    Migration {
        version: 2,
        description: "fingerprints of accepted records",
        sql: include_str!("../migrations/0002_fingerprints.sql"),
    },
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

/// Where an accepted event was written, and what it held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Accepted {
    pub partition: i32,
    pub offset: i64,
    /// `None` for ids remembered before fingerprints were kept: their content is unknown.
    pub fingerprint: Option<Fingerprint>,
}

/// What an accepted record held, so that a retry (the same content under its id) can be
/// told from another record reusing the id: the schema its bytes were written with, and a
/// digest of those bytes. Two fingerprints under different schemas prove nothing (the
/// dataset's schema may have evolved between a try and its retry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint {
    /// The writer schema's registry id; [`Fingerprint::FIELDS`] for content hashed field
    /// by field rather than as an encoding.
    schema_id: u32,
    digest: [u8; 16],
}

impl Fingerprint {
    /// The "schema" of a fingerprint made from a record's fields (a label: its Avro
    /// encoding also carries when it was received, which a retry changes).
    pub const FIELDS: u32 = 0;

    /// Of an Avro body written with `schema_id`.
    pub fn of(schema_id: u32, body: &[u8]) -> Self {
        Self::of_parts(schema_id, &[body])
    }

    /// Of `parts` in order, each delimited, under `schema_id`.
    pub fn of_parts(schema_id: u32, parts: &[&[u8]]) -> Self {
        let mut hasher = Sha256::new();
        for part in parts {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part);
        }
        let mut digest = [0; 16];
        digest.copy_from_slice(&hasher.finalize()[..16]);
        Self { schema_id, digest }
    }

    /// Of a record as it is on the wire (Confluent-framed Avro); `None` for other bytes.
    pub fn of_framed(payload: &[u8]) -> Option<Self> {
        let (schema_id, body) = mlops_schema::split_frame(payload).ok()?;
        Some(Self::of(schema_id, body))
    }

    /// Whether `other` is proven to hold other content: the same schema, other bytes.
    pub fn contradicts(&self, other: &Self) -> bool {
        self.schema_id == other.schema_id && self.digest != other.digest
    }

    fn to_text(self) -> String {
        format!("{}:{}", self.schema_id, hex::encode(self.digest))
    }

    fn parse(text: &str) -> Option<Self> {
        let (schema_id, digest) = text.split_once(':')?;
        let mut bytes = [0; 16];
        hex::decode_to_slice(digest, &mut bytes).ok()?;
        Some(Self {
            schema_id: schema_id.parse().ok()?,
            digest: bytes,
        })
    }
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
                "SELECT event_id, partition_id, record_offset, fingerprint FROM ingestion_accepted
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
                        fingerprint: row
                            .get::<Option<String>, _>(3)
                            .as_deref()
                            .and_then(Fingerprint::parse),
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
                .map(|i| format!("({})", placeholders(1 + i * 6, 6, 1)))
                .collect::<Vec<_>>()
                .join(", ");
            let sql = format!(
                "INSERT INTO ingestion_accepted (dataset, event_id, partition_id, record_offset, accepted_at, fingerprint)
                 VALUES {rows}
                 ON CONFLICT (dataset, event_id) DO UPDATE SET partition_id = excluded.partition_id,
                 record_offset = excluded.record_offset, accepted_at = excluded.accepted_at,
                 fingerprint = excluded.fingerprint"
            );
            let mut query = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (event_id, accepted) in chunk {
                query = query
                    .bind(dataset)
                    .bind(event_id.as_str())
                    .bind(i64::from(accepted.partition))
                    .bind(accepted.offset)
                    .bind(at)
                    .bind(accepted.fingerprint.map(Fingerprint::to_text));
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
/// Rows (6 parameters each) written per statement.
const ROW_CHUNK: usize = 160;

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
        let at = |partition, offset| Accepted {
            partition,
            offset,
            fingerprint: None,
        };
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

        // What a record held is kept with its id; ids remembered without it stay unknown.
        let held = Fingerprint::of(7, b"body");
        store
            .remember(
                "d",
                &[(
                    "e2".into(),
                    Accepted {
                        fingerprint: Some(held),
                        ..at(1, 6_000)
                    },
                )],
                3_000,
            )
            .await
            .unwrap();
        let found = store.accepted("d", &["e2", "e1"], 2_000).await.unwrap();
        assert_eq!(found["e2"].fingerprint, Some(held));
        assert_eq!(found["e1"].fingerprint, None);

        // Pruning forgets what is past the window, and only that.
        assert_eq!(
            store.prune(2_000).await.unwrap(),
            1_199,
            "all but e1 and e2, remembered again later"
        );
        let mut left: Vec<String> = store
            .accepted("d", &ids, 0)
            .await
            .unwrap()
            .into_keys()
            .collect();
        left.sort();
        assert_eq!(left, ["e1", "e2"]);
    }

    #[test]
    fn fingerprints_prove_other_content_only_under_the_same_schema() {
        let body = Fingerprint::of(3, b"\x02ab");
        assert!(!body.contradicts(&Fingerprint::of(3, b"\x02ab")), "a retry");
        assert!(
            body.contradicts(&Fingerprint::of(3, b"\x02ac")),
            "other bytes"
        );
        // Under another schema version the same event may be encoded otherwise.
        assert!(!body.contradicts(&Fingerprint::of(4, b"\x02ac")));
        // On the wire, the Confluent header names the schema.
        assert_eq!(
            Fingerprint::of_framed(&mlops_schema::frame(3, b"\x02ab")),
            Some(body)
        );
        assert_eq!(Fingerprint::of_framed(b"not avro"), None);
        // Parts are delimited: moving a byte between them is other content.
        assert!(
            Fingerprint::of_parts(0, &[b"ab", b"c"])
                .contradicts(&Fingerprint::of_parts(0, &[b"a", b"bc"]))
        );
        assert_eq!(Fingerprint::parse(&body.to_text()), Some(body));
        assert_eq!(Fingerprint::parse("3:zz"), None);
    }
}
