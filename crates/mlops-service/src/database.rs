//! One way to open a service's metadata database: `sqlx::Any`, so the same SQL runs on
//! SQLite (embedded default) and PostgreSQL (production).

use std::path::Path;

use sqlx::{
    AnyPool,
    any::{AnyPoolOptions, install_default_drivers},
};

#[derive(Debug, thiserror::Error)]
pub enum DatabaseError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database directory {0}: {1}")]
    Directory(String, std::io::Error),
    #[error("database url {0:?} is neither sqlite: nor postgres:")]
    UnsupportedUrl(String),
}

/// Connects (creating a SQLite file and its directory when needed) and runs `migrations`,
/// each of which must be idempotent (`CREATE ... IF NOT EXISTS`).
pub async fn connect(url: &str, migrations: &[&str]) -> Result<AnyPool, DatabaseError> {
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
        options.max_connections(8).connect(url).await?
    } else {
        return Err(DatabaseError::UnsupportedUrl(url.to_owned()));
    };
    for statement in migrations {
        sqlx::query(sqlx::AssertSqlSafe(*statement))
            .execute(&pool)
            .await?;
    }
    Ok(pool)
}
