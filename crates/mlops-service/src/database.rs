//! One way to open a service's metadata database: `sqlx::Any`, so the same SQL runs on
//! SQLite (embedded default) and PostgreSQL (production).

use std::{borrow::Cow, path::Path};

use sqlx::{
    AnyPool,
    any::{AnyPoolOptions, install_default_drivers},
    migrate::{MigrateError, Migration as SqlxMigration, MigrationType, Migrator},
};

/// One versioned change of a service's schema, kept in `<service>/migrations/` as
/// `NNNN_<name>.sql` and embedded with `include_str!`. Applied once, in version order,
/// recorded (with a checksum) in `_sqlx_migrations`; portable between SQLite and
/// PostgreSQL, so each service has one list for both.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub description: &'static str,
    pub sql: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database directory {0}: {1}")]
    Directory(String, std::io::Error),
    #[error("database url {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
    #[error("database migration: {0}")]
    Migrate(#[from] MigrateError),
}

/// Connects (creating a SQLite file and its directory when needed) and applies the
/// `migrations` not applied yet. One that was applied and has since changed is an error:
/// a schema change is a new migration, never an edit.
pub async fn connect(url: &str, migrations: &[Migration]) -> Result<AnyPool, DatabaseError> {
    install_default_drivers();
    let options = AnyPoolOptions::new();
    let pool = if let Some(path) = url.strip_prefix("sqlite://") {
        let file = path.split('?').next().unwrap_or(path);
        if let Some(dir) = Path::new(file)
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
        {
            std::fs::create_dir_all(dir)
                .map_err(|e| DatabaseError::Directory(dir.display().to_string(), e))?;
        }
        let url = if url.contains('?') {
            url.to_owned()
        } else {
            format!("{url}?mode=rwc")
        };
        // One writer at a time is what SQLite does anyway; one connection avoids
        // "database is locked" between our own connections.
        options.max_connections(1).connect(&url).await?
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        // A database that cannot give a connection within seconds is down for this request:
        // it is answered 503 rather than held for sqlx's default 30 s.
        options
            .max_connections(8)
            .acquire_timeout(std::time::Duration::from_secs(5))
            .connect(url)
            .await?
    } else {
        return Err(DatabaseError::UnsupportedUrl(url.to_owned()));
    };
    let migrator = Migrator::with_migrations(
        migrations
            .iter()
            .map(|m| {
                SqlxMigration::new(
                    m.version,
                    Cow::Borrowed(m.description),
                    MigrationType::Simple,
                    sqlx::SqlStr::from_static(m.sql),
                    false,
                )
            })
            .collect(),
    );
    migrator.run(&pool).await?;
    Ok(pool)
}

#[cfg(test)]
mod tests {
    use sqlx::Row;

    use super::*;

    const FIRST: Migration = Migration {
        version: 1,
        description: "notes",
        sql: "CREATE TABLE IF NOT EXISTS notes (id BIGINT PRIMARY KEY, text TEXT NOT NULL);",
    };
    const SECOND: Migration = Migration {
        version: 2,
        description: "notes author",
        sql: "ALTER TABLE notes ADD COLUMN author TEXT;",
    };

    async fn applied(pool: &AnyPool) -> Vec<i64> {
        sqlx::query("SELECT version FROM _sqlx_migrations ORDER BY version")
            .fetch_all(pool)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<i64, _>(0))
            .collect()
    }

    #[tokio::test]
    async fn a_schema_change_is_an_upgrade_applied_once_and_an_edit_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/service.db", dir.path().display());

        // A database created before versioned migrations: the table already exists.
        let old = connect_raw(&url).await;
        sqlx::query("CREATE TABLE notes (id BIGINT PRIMARY KEY, text TEXT NOT NULL)")
            .execute(&old)
            .await
            .unwrap();
        sqlx::query("INSERT INTO notes (id, text) VALUES (1, 'kept')")
            .execute(&old)
            .await
            .unwrap();
        old.close().await;

        let pool = connect(&url, &[FIRST]).await.unwrap();
        assert_eq!(applied(&pool).await, [1]);
        pool.close().await;
        let pool = connect(&url, &[FIRST, SECOND]).await.unwrap();
        assert_eq!(applied(&pool).await, [1, 2]);
        sqlx::query("UPDATE notes SET author = 'me' WHERE id = 1")
            .execute(&pool)
            .await
            .expect("the new column exists");
        let text: String = sqlx::query("SELECT text FROM notes WHERE id = 1")
            .fetch_one(&pool)
            .await
            .unwrap()
            .get(0);
        assert_eq!(text, "kept");
        pool.close().await;

        let edited = Migration {
            sql: "CREATE TABLE IF NOT EXISTS notes (id BIGINT PRIMARY KEY);",
            ..FIRST
        };
        let refused = connect(&url, &[edited, SECOND]).await.unwrap_err();
        assert!(matches!(refused, DatabaseError::Migrate(_)), "{refused}");
    }

    async fn connect_raw(url: &str) -> AnyPool {
        install_default_drivers();
        AnyPoolOptions::new()
            .max_connections(1)
            .connect(&format!("{url}?mode=rwc"))
            .await
            .unwrap()
    }
}
