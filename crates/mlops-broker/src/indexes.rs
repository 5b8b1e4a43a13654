//! Indexes that Tansu 0.6's SQLite schema lacks, created by us after Tansu has laid out
//! its tables, on every start (idempotently, so an existing database is repaired too).
//!
//! Tansu's DDL (`040-header.sql`) gives the `header` table neither a primary key nor an
//! index, while its fetch path reads each record's headers by `(topition, offset_id)`
//! (`header_fetch.sql`). Without an index every record read scans the whole header table,
//! so reading a partition back is quadratic in its length: with ~30,000 records that
//! carry trace headers, a consumer starting at offset 0 got nothing for minutes and the
//! broker answered nothing else meanwhile. ARCHITECTURE.md has the reproduction.

use std::path::Path;

use crate::{Error, Result};

/// `(name, statement)`; each statement must be idempotent.
pub(crate) const INDEXES: &[(&str, &str)] = &[(
    "header_topition_offset",
    "CREATE INDEX IF NOT EXISTS header_topition_offset ON header (topition, offset_id)",
)];

/// Creates the missing indexes in the broker's database at `path`.
pub(crate) async fn ensure(path: &Path) -> Result<()> {
    let connection = open(path).await?;
    for (name, statement) in INDEXES {
        connection
            .execute(statement, ())
            .await
            .map_err(|e| Error::Storage(format!("index {name}: {e}")))?;
    }
    Ok(())
}

/// The names of the indexes on `table` in the database at `path`.
pub async fn indexes_on(path: &Path, table: &str) -> Result<Vec<String>> {
    let connection = open(path).await?;
    let mut rows = connection
        .query(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = ?1",
            [table],
        )
        .await
        .map_err(|e| Error::Storage(e.to_string()))?;
    let mut names = Vec::new();
    while let Some(row) = rows
        .next()
        .await
        .map_err(|e| Error::Storage(e.to_string()))?
    {
        names.push(
            row.get::<String>(0)
                .map_err(|e| Error::Storage(e.to_string()))?,
        );
    }
    Ok(names)
}

/// A connection of our own to the broker's database (SQLite serialises it with Tansu's).
async fn open(path: &Path) -> Result<libsql::Connection> {
    let storage = |e: libsql::Error| Error::Storage(format!("{}: {e}", path.display()));
    libsql::Builder::new_local(path)
        .build()
        .await
        .map_err(storage)?
        .connect()
        .map_err(storage)
}
