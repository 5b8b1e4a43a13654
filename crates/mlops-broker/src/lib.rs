//! The embedded Kafka-compatible broker: Tansu, run inside our own process.
//!
//! Durable storage is Tansu's SQLite engine, the one the platform runs on, tests included.
//! Tansu's in-memory engine is not used: it serves a fetch from the first whole producer
//! batch at or after the offset asked for, so a consumer resuming inside a batch skips the
//! rest of it, or stalls when it is the partition's last.
//!
//! Tansu's SQLite schema lacks an index its fetch path needs; [`indexes`] adds it on
//! every start. Its group coordinator can leave a group without a leader, or with
//! partitions assigned to no live member, for good; [`groups`] mends that.

mod groups;
mod indexes;

pub use indexes::indexes_on;

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use tansu_broker::broker::Broker;
use tansu_storage::StorageContainer;
use tokio::task::JoinHandle;
use url::Url;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("broker storage: {0}")]
    Storage(String),
    #[error("broker failed to start: {0}")]
    Start(String),
    #[error("broker did not accept connections on {0} within {1:?}")]
    NotReady(SocketAddr, Duration),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where the broker keeps topics, records and committed offsets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BrokerStorage {
    /// Lost when the process ends. Not for consumers that resume (see the module docs).
    Memory,
    /// A SQLite file, named relative to the current working directory.
    SqliteInWorkingDir(String),
    /// A SQLite file at an absolute path.
    SqliteFile(PathBuf),
}

impl BrokerStorage {
    fn url(&self) -> Result<Url> {
        let text = match self {
            BrokerStorage::Memory => "memory://tansu/".to_owned(),
            BrokerStorage::SqliteInWorkingDir(file) => {
                if Path::new(file).is_absolute() || file.contains('/') {
                    return Err(Error::Storage(format!(
                        "{file}: must be a plain file name in the working directory"
                    )));
                }
                format!("sqlite://{file}")
            }
            // Tansu appends the URL's path, less its first '/', to the working directory;
            // appending an absolute path replaces it (`PathBuf::push`), hence the extra '/'.
            BrokerStorage::SqliteFile(path) => {
                if !path.is_absolute() {
                    return Err(Error::Storage(format!(
                        "{}: must be an absolute path",
                        path.display()
                    )));
                }
                format!("sqlite:///{}", path.display())
            }
        };
        Url::parse(&text).map_err(|e| Error::Storage(e.to_string()))
    }

    /// The SQLite database file, as Tansu resolves it (relative to the working directory).
    pub fn database_path(&self) -> Result<Option<PathBuf>> {
        match self {
            BrokerStorage::Memory => Ok(None),
            BrokerStorage::SqliteInWorkingDir(file) => std::env::current_dir()
                .map(|dir| Some(dir.join(file)))
                .map_err(|e| Error::Storage(format!("working directory: {e}"))),
            BrokerStorage::SqliteFile(path) => Ok(Some(path.clone())),
        }
    }
}

const NODE: i32 = 111;
const CLUSTER: &str = "mlops";

/// A running broker. Dropping it stops the broker.
#[derive(Debug)]
pub struct EmbeddedBroker {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EmbeddedBroker {
    /// Starts a broker listening on `addr` and waits until it accepts connections.
    pub async fn start(addr: SocketAddr, storage: BrokerStorage) -> Result<Self> {
        let listener =
            Url::parse(&format!("tcp://{addr}")).map_err(|e| Error::Start(e.to_string()))?;
        // What Tansu's broker builder does, with our group coordinator in place of its own.
        let store = StorageContainer::builder()
            .cluster_id(CLUSTER)
            .node_id(NODE)
            .advertised_listener(listener.clone())
            .storage(storage.url()?)
            .silent(true)
            .build()
            .await
            .map_err(|e| Error::Start(format!("{e:?}")))?;
        let groups =
            groups::Groups::new(store.clone()).map_err(|e| Error::Start(format!("{e:?}")))?;
        let broker = Broker::new(
            NODE,
            CLUSTER,
            listener.clone(),
            listener,
            store,
            groups,
            uuid::Uuid::now_v7(),
        );
        // Tansu has created its tables by now; nothing is served before the indexes exist.
        if let Some(path) = storage.database_path()? {
            indexes::ensure(&path).await?;
        }
        // The broker is the wrapper here: its server task is owned by `EmbeddedBroker`,
        // which aborts it on drop.
        #[allow(clippy::disallowed_methods)]
        let task = tokio::spawn(async move {
            let mut broker = broker;
            if let Err(e) = broker.serve(std::time::Instant::now().into()).await {
                tracing::error!(error = ?e, "embedded broker stopped");
            }
        });
        let broker = Self { addr, task };
        broker.wait_until_listening(Duration::from_secs(30)).await?;
        Ok(broker)
    }

    async fn wait_until_listening(&self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        let addr = self.addr;
        loop {
            if self.task.is_finished() {
                return Err(Error::Start("broker task ended during start-up".to_owned()));
            }
            let connected = tokio::task::spawn_blocking(move || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })
            .await
            .unwrap_or(false);
            if connected {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::NotReady(addr, limit));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap_servers(&self) -> String {
        self.addr.to_string()
    }

    /// Resolves when the broker stops on its own (an error); never in normal operation.
    pub async fn stopped(&mut self) {
        let _ = (&mut self.task).await;
    }
}

impl Drop for EmbeddedBroker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_storage_must_be_a_plain_file_name() {
        assert!(
            BrokerStorage::SqliteInWorkingDir("/abs/tansu.db".into())
                .url()
                .is_err()
        );
        assert!(
            BrokerStorage::SqliteInWorkingDir("a/tansu.db".into())
                .url()
                .is_err()
        );
        assert_eq!(
            BrokerStorage::SqliteInWorkingDir("tansu.db".into())
                .url()
                .unwrap()
                .as_str(),
            "sqlite://tansu.db"
        );
        assert!(BrokerStorage::SqliteFile("tansu.db".into()).url().is_err());
    }

    /// A broker on a SQLite file in a fresh directory: the broker, its address, the file.
    async fn on_sqlite_file() -> (EmbeddedBroker, SocketAddr, PathBuf, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.db");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let broker = EmbeddedBroker::start(addr, BrokerStorage::SqliteFile(file.clone()))
            .await
            .unwrap();
        (broker, addr, file, dir)
    }

    #[tokio::test]
    async fn sqlite_storage_can_live_at_an_absolute_path() {
        let (broker, _, file, _dir) = on_sqlite_file().await;
        assert!(file.is_file(), "no database at {}", file.display());
        drop(broker);
    }

    /// The plan SQLite picks for the query Tansu runs per fetched record (its
    /// `header_fetch.sql`): without our index it scans the whole header table.
    #[tokio::test]
    async fn header_reads_use_an_index_not_a_scan() {
        let (broker, addr, file, _dir) = on_sqlite_file().await;
        assert!(
            indexes_on(&file, "header")
                .await
                .unwrap()
                .contains(&"header_topition_offset".to_owned())
        );
        let db = libsql::Builder::new_local(&file).build().await.unwrap();
        let connection = db.connect().unwrap();
        let mut rows = connection
            .query(
                "EXPLAIN QUERY PLAN SELECT h.k, h.v FROM header h \
                 JOIN record r ON h.topition = r.topition AND h.offset_id = r.offset_id \
                 JOIN topition tp ON tp.id = r.topition JOIN topic t ON tp.topic = t.id \
                 JOIN cluster c ON t.cluster = c.id \
                 WHERE c.name = ?1 AND t.name = ?2 AND tp.partition = ?3 AND r.offset_id = ?4",
                ("mlops", "t", 0, 0),
            )
            .await
            .unwrap();
        let mut plan = Vec::new();
        while let Some(row) = rows.next().await.unwrap() {
            plan.push(row.get::<String>(3).unwrap());
        }
        assert!(
            plan.iter()
                .any(|step| step.contains("h USING") && step.contains("header_topition_offset")),
            "header rows are not found through the index: {plan:?}"
        );
        assert!(
            !plan.iter().any(|step| step.starts_with("SCAN h")),
            "the header table is scanned: {plan:?}"
        );
        // A second start over the same database (a restart) keeps working.
        drop(broker);
        let again = EmbeddedBroker::start(addr, BrokerStorage::SqliteFile(file.clone())).await;
        assert!(again.is_ok(), "restart over an indexed database: {again:?}");
    }
}
