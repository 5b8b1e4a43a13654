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
    #[error("database: no answer within {0:?}")]
    NoAnswer(std::time::Duration),
}

/// How long [`reach`] waits for a connection.
const REACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Opens one connection to the server at `url` and closes it: the reason a pool would
/// report only as its timeout (the port refusing connections, a failed login, the server
/// still starting) shows in the error. Nothing to reach for SQLite, a local file.
pub async fn reach(url: &str) -> Result<(), DatabaseError> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        return Ok(());
    }
    install_default_drivers();
    let connection = tokio::time::timeout(REACH_TIMEOUT, sqlx::AnyConnection::connect(url))
        .await
        .map_err(|_| DatabaseError::NoAnswer(REACH_TIMEOUT))??;
    connection.close().await?;
    Ok(())
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
        options
            .max_connections(1)
            .after_connect(|connection, _| Box::pin(write_ahead_log(connection)))
            .connect(&url)
            .await?
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

/// Puts an SQLite database in write-ahead-log mode, still synchronous in full (a commit is
/// on disk when it returns, as before). In the default rollback-journal mode every commit
/// creates, syncs and deletes a journal file and syncs the database too; in WAL mode it
/// appends to one file and syncs that once. Measured on ingestion's idempotency store
/// (one lookup and one record per request of events with ids, 32 connections): 1.6× the
/// events/s at about a quarter less CPU per event (`load-tests/README.md`). Best effort: a
/// database another process holds, or one opened read-only, stays as it is.
async fn write_ahead_log(connection: &mut sqlx::AnyConnection) -> Result<(), sqlx::Error> {
    use sqlx::Executor as _;
    if let Err(e) = connection.execute("PRAGMA journal_mode = WAL").await {
        tracing::warn!(error = %e, "SQLite stays in rollback-journal mode");
    }
    connection.execute("PRAGMA synchronous = FULL").await?;
    Ok(())
}

/// Whether `error` says the database could not be reached (connection refused or lost, no
/// connection within the pool's wait) rather than that the statement was wrong: a request
/// meeting it is answered 503 ([`crate::ApiError::database_unavailable`]), not 500. A
/// server shutting down or not accepting connections yet (SQLSTATE classes 08 and 57P)
/// counts as unreachable, and so does an SQLite file another connection still held when
/// the busy timeout ran out (`SQLITE_BUSY`, `SQLITE_LOCKED`): a retry can succeed.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    use sqlx::Error;
    match error {
        Error::Io(_) | Error::PoolTimedOut | Error::PoolClosed | Error::WorkerCrashed => true,
        Error::Database(e) => {
            let Some(code) = e.code() else {
                return false;
            };
            if e.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
                // An extended result code: its low byte is the primary one.
                return code
                    .parse::<i32>()
                    .is_ok_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
            }
            code.starts_with("08") || code.starts_with("57P")
        }
        _ => false,
    }
}

/// SQLite's primary result codes for a file held by another connection.
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

/// A failed statement as an API answers it: 503 `database_unavailable` with Retry-After
/// when the database could not be reached ([`is_unavailable`]), else 500 `code` —
/// retrying a wrong statement or a corrupt row would not help. Either way the message is
/// `database: <error>`, as the services' store errors print it.
pub fn answer(error: &sqlx::Error, code: &'static str) -> crate::ApiError {
    let message = format!("database: {error}");
    if is_unavailable(error) {
        crate::ApiError::database_unavailable(message)
    } else {
        crate::ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, code, message)
    }
}

/// Whether `error`, met opening the database at `url`, is one that a database coming up
/// would end: unreachable, refusing connections while it starts, timing out. Never for
/// SQLite, a local file; never for an edited or missing migration.
pub fn worth_waiting_for(url: &str, error: &DatabaseError) -> bool {
    use sqlx::Error;
    if url.starts_with("sqlite:") {
        return false;
    }
    match error {
        DatabaseError::Sqlx(e) => {
            is_unavailable(e)
                || matches!(e, Error::Tls(_) | Error::Database(_) | Error::Protocol(_))
        }
        // The connection lost while migrating.
        DatabaseError::Migrate(MigrateError::Execute(e)) => is_unavailable(e),
        DatabaseError::NoAnswer(_) => true,
        _ => false,
    }
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
        // Waiting would not undo the edit, whatever the database.
        assert!(!worth_waiting_for("postgres://mlops@db/mlops", &refused));
    }

    #[tokio::test]
    async fn only_a_database_that_does_not_answer_is_worth_waiting_for() {
        // A PostgreSQL server not up yet: its port refuses connections.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let url = format!("postgres://mlops@127.0.0.1:{port}/mlops");
        let refused = reach(&url).await.unwrap_err();
        assert!(
            refused.to_string().contains("refused"),
            "the reason, not a pool's timeout: {refused}"
        );
        assert!(worth_waiting_for(&url, &refused), "{refused}");
        let timed_out = connect(&url, &[FIRST]).await.unwrap_err();
        assert!(worth_waiting_for(&url, &timed_out), "{timed_out}");

        // A local SQLite file that cannot be created: no one else will fix it.
        let file = tempfile::NamedTempFile::new().unwrap();
        let url = format!("sqlite://{}/service.db", file.path().display());
        let failed = connect(&url, &[FIRST]).await.unwrap_err();
        assert!(!worth_waiting_for(&url, &failed), "{failed}");

        let url = "mysql://db/mlops";
        let unsupported = connect(url, &[FIRST]).await.unwrap_err();
        assert!(!worth_waiting_for(url, &unsupported), "{unsupported}");
    }

    /// A commit appends to the write-ahead log and syncs it, in full: also a database the
    /// rollback journal created before is moved to it.
    #[tokio::test]
    async fn sqlite_commits_to_a_write_ahead_log_synchronously() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/service.db", dir.path().display());
        let old = connect_raw(&url).await;
        let journal = |pool: AnyPool| async move {
            let row = sqlx::query("PRAGMA journal_mode")
                .fetch_one(&pool)
                .await
                .unwrap();
            row.get::<String, _>(0)
        };
        assert_eq!(journal(old.clone()).await, "delete");
        old.close().await;

        let pool = connect(&url, &[FIRST]).await.unwrap();
        sqlx::query("INSERT INTO notes (id, text) VALUES (1, 'logged')")
            .execute(&pool)
            .await
            .unwrap();
        assert_eq!(journal(pool.clone()).await, "wal");
        let synchronous = sqlx::query("PRAGMA synchronous")
            .fetch_one(&pool)
            .await
            .unwrap();
        assert_eq!(synchronous.get::<i64, _>(0), 2, "FULL");
        assert!(dir.path().join("service.db-wal").exists());
    }

    #[tokio::test]
    async fn an_sqlite_file_held_by_another_connection_is_unavailable_a_wrong_statement_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}/service.db", dir.path().display());
        let holder = connect_raw(&url).await;
        sqlx::query("CREATE TABLE notes (id BIGINT PRIMARY KEY)")
            .execute(&holder)
            .await
            .unwrap();
        let mut holding = holder.begin().await.unwrap();
        sqlx::query("INSERT INTO notes (id) VALUES (1)")
            .execute(&mut *holding)
            .await
            .unwrap();

        // Another connection that does not wait: the file is busy.
        let other = connect_raw(&url).await;
        sqlx::query("PRAGMA busy_timeout = 0")
            .execute(&other)
            .await
            .unwrap();
        let busy = sqlx::query("INSERT INTO notes (id) VALUES (2)")
            .execute(&other)
            .await
            .unwrap_err();
        assert!(is_unavailable(&busy), "{busy:?}");
        let answered = answer(&busy, "test_error");
        assert_eq!(answered.status, axum::http::StatusCode::SERVICE_UNAVAILABLE);

        let wrong = sqlx::query("SELECT nothing FROM nowhere")
            .execute(&other)
            .await
            .unwrap_err();
        assert!(!is_unavailable(&wrong), "{wrong:?}");
        let answered = answer(&wrong, "test_error");
        assert_eq!(
            answered.status,
            axum::http::StatusCode::INTERNAL_SERVER_ERROR
        );
        assert_eq!(answered.code, "test_error");
        holding.rollback().await.unwrap();
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
