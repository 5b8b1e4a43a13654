//! Everything the feature service keeps lives in one object store (a local directory by
//! default, S3-compatible by URL), under these prefixes:
//!
//! - `views/<view>/v<N>.json` — immutable view versions;
//! - `offline/<view>/v<N>/date=<YYYY-MM-DD>/batch-<n>.parquet` — feature rows by event date;
//! - `labels/date=<YYYY-MM-DD>/batch-<n>.parquet` — ground-truth labels;
//! - `state/<job>/checkpoint.json` and `buffer-<n>.parquet` — stream checkpoints;
//! - `snapshots/<id>/data.parquet`, `manifest.json` — immutable training sets.
//!
//! Batch files are named by their batch number, and a batch counts only once its
//! checkpoint names it: recovery deletes files of later, unfinished batches, so the
//! offline store holds every row exactly once however a run ends.

use std::{io::Cursor, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path, prefix::PrefixStore};
use polars::prelude::*;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object store: {0}")]
    Object(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Polars(#[from] PolarsError),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Clone)]
pub struct FeatureStore {
    objects: Arc<dyn ObjectStore>,
    location: String,
}

impl std::fmt::Debug for FeatureStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FeatureStore")
            .field("location", &self.location)
            .finish()
    }
}

impl FeatureStore {
    /// `url` is `s3://bucket/prefix` (credentials and endpoint from the standard `AWS_*`
    /// variables), `file:///dir`, or a plain directory path.
    pub fn open(url: &str) -> Result<Self> {
        let objects: Arc<dyn ObjectStore> = if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            let s3 = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .build()?;
            if prefix.is_empty() {
                Arc::new(s3)
            } else {
                Arc::new(PrefixStore::new(s3, prefix))
            }
        } else {
            let dir = url.strip_prefix("file://").unwrap_or(url);
            std::fs::create_dir_all(dir)
                .map_err(|e| StoreError::Invalid(format!("cannot create {dir}: {e}")))?;
            Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir)?)
        };
        Ok(Self {
            objects,
            location: url.to_owned(),
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        self.objects
            .put(&Path::from(path), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The object at `path`, or `None` when there is none.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.objects.get(&Path::from(path)).await {
            Ok(result) => Ok(Some(result.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        match self.objects.delete(&Path::from(path)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Paths of every object under `prefix`, sorted.
    pub async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut paths: Vec<String> = self
            .objects
            .list(Some(&Path::from(prefix)))
            .map_ok(|meta| meta.location.to_string())
            .try_collect()
            .await?;
        paths.sort();
        Ok(paths)
    }

    pub async fn put_json<T: serde::Serialize>(&self, path: &str, value: &T) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(value)
            .map_err(|e| StoreError::Invalid(format!("{path}: {e}")))?;
        self.put(path, bytes).await
    }

    pub async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>> {
        match self.get(path).await? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::Invalid(format!("{path}: {e}"))),
        }
    }

    pub async fn put_frame(&self, path: &str, frame: &mut DataFrame) -> Result<()> {
        let mut owned = frame.clone();
        let bytes = mlops_runtime::cpu::run(move || parquet_bytes(&mut owned)).await?;
        self.put(path, bytes).await
    }

    pub async fn get_frame(&self, path: &str) -> Result<Option<DataFrame>> {
        match self.get(path).await? {
            None => Ok(None),
            Some(bytes) => Ok(Some(
                mlops_runtime::cpu::run(move || ParquetReader::new(Cursor::new(bytes)).finish())
                    .await?,
            )),
        }
    }

    /// Every Parquet file under `prefix`, stacked (`None` when there is none).
    pub async fn read_frames(&self, prefix: &str) -> Result<Option<DataFrame>> {
        let mut frames = Vec::new();
        for path in self.list(prefix).await? {
            if path.ends_with(".parquet")
                && let Some(frame) = self.get_frame(&path).await?
            {
                frames.push(frame.lazy());
            }
        }
        if frames.is_empty() {
            return Ok(None);
        }
        let args = UnionArgs {
            to_supertypes: true,
            ..UnionArgs::default()
        };
        let stacked = mlops_runtime::cpu::run(move || concat(frames, args)?.collect()).await?;
        Ok(Some(stacked))
    }

    /// Writes `rows` as batch `batch` under `prefix`, one file per event date
    /// (`<prefix>date=YYYY-MM-DD/batch-<n>.parquet`); rewriting a batch overwrites its files.
    pub async fn put_batch_by_date(
        &self,
        prefix: &str,
        rows: &DataFrame,
        batch: u64,
    ) -> Result<()> {
        let rows = rows.clone();
        let parts = mlops_runtime::cpu::run(move || {
            rows.lazy()
                .with_column(
                    col("event_time")
                        .cast(DataType::Datetime(TimeUnit::Milliseconds, None))
                        .dt()
                        .strftime("%Y-%m-%d")
                        .alias("__date"),
                )
                .collect()?
                .partition_by_stable(["__date"], true)
        })
        .await?;
        for part in parts {
            let date = part
                .column("__date")?
                .str()?
                .get(0)
                .unwrap_or("unknown")
                .to_owned();
            let mut part = part.drop("__date")?;
            let path = format!("{prefix}date={date}/{}", batch_file(batch));
            self.put_frame(&path, &mut part).await?;
        }
        Ok(())
    }
}

/// Parquet encoding of `frame` (deterministic: same rows, same bytes).
pub fn parquet_bytes(frame: &mut DataFrame) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    ParquetWriter::new(&mut bytes).finish(frame)?;
    Ok(bytes)
}

/// `batch-000000000042.parquet` → 42.
pub fn batch_number(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("batch-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

pub fn batch_file(n: u64) -> String {
    format!("batch-{n:012}.parquet")
}
