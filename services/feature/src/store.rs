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
//!
//! A date partition's durable batch files are compacted into `compact-<n>.parquet`, which
//! holds every batch up to `n` of that date: reads take a partition's newest compacted
//! file and the batch files after it, and ignore what it covers (left behind only by a
//! compaction cut short, and removed by the next). Reads can also be limited to a range of
//! dates, so their cost follows the window asked for, not the length of history.

use std::{io::Cursor, sync::Arc};

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, path::Path};
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

/// Where erased entities are recorded, per dataset.
const ERASURES: &str = "erasures";

/// `frame` without the rows of `erased` entities (its `entity_id` column).
pub fn without_entities(
    frame: DataFrame,
    erased: &std::collections::HashSet<String>,
) -> PolarsResult<DataFrame> {
    if erased.is_empty() || frame.height() == 0 {
        return Ok(frame);
    }
    let ids = frame.column("entity_id")?.str()?;
    let keep: BooleanChunked = (0..ids.len())
        .map(|i| Some(ids.get(i).is_none_or(|id| !erased.contains(id))))
        .collect();
    frame.filter(&keep)
}

#[derive(Clone)]
pub struct FeatureStore {
    objects: Arc<dyn ObjectStore>,
    location: String,
    /// Seals every object written and opens every object read (encryption at rest).
    sealer: Option<Arc<mlops_service::sealing::Sealer>>,
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
        let objects = mlops_service::objects::open(url)?;
        Ok(Self {
            objects,
            sealer: None,
            location: url.to_owned(),
        })
    }

    /// Every object this store writes is sealed (AES-256-GCM), every one it reads opened.
    pub fn with_sealer(mut self, sealer: Option<Arc<mlops_service::sealing::Sealer>>) -> Self {
        self.sealer = sealer;
        self
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub async fn put(&self, path: &str, bytes: Vec<u8>) -> Result<()> {
        let bytes = match &self.sealer {
            Some(sealer) => sealer
                .seal(&bytes)
                .map_err(|e| StoreError::Invalid(format!("{path}: {e}")))?,
            None => bytes,
        };
        self.objects
            .put(&Path::from(path), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// The object at `path`, or `None` when there is none.
    pub async fn get(&self, path: &str) -> Result<Option<Bytes>> {
        match self.objects.get(&Path::from(path)).await {
            Ok(result) => {
                let stored = result.bytes().await?;
                match &self.sealer {
                    Some(sealer) => sealer
                        .open(&stored)
                        .map(|plain| Some(Bytes::from(plain)))
                        .map_err(|e| StoreError::Invalid(format!("{path}: {e}"))),
                    None if mlops_service::sealing::Sealer::is_sealed(&stored) => {
                        Err(StoreError::Invalid(format!(
                            "{path} is encrypted, and this service has no keys \
                             (encryption.keys_file)"
                        )))
                    }
                    None => Ok(Some(stored)),
                }
            }
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

    /// Records that `entity` of `dataset` was erased (GDPR): no training set built after
    /// this includes its rows or labels, and the online store forgets it. One object per
    /// entity, named by the SHA-256 of its id, so that every view of the dataset can
    /// record it without racing the others.
    pub async fn erase_entity(&self, dataset: &str, entity: &str, at: i64) -> Result<()> {
        use sha2::{Digest, Sha256};
        let name = hex::encode(Sha256::digest(entity.as_bytes()));
        self.put_json(
            &format!("{ERASURES}/{dataset}/{name}.json"),
            &serde_json::json!({"entity_id": entity, "erased_at": at}),
        )
        .await
    }

    /// The entities of `dataset` erased so far.
    pub async fn erased_entities(
        &self,
        dataset: &str,
    ) -> Result<std::collections::HashSet<String>> {
        let mut erased = std::collections::HashSet::new();
        for path in self.list(&format!("{ERASURES}/{dataset}/")).await? {
            if let Some(record) = self.get_json::<serde_json::Value>(&path).await?
                && let Some(entity) = record["entity_id"].as_str()
            {
                erased.insert(entity.to_owned());
            }
        }
        Ok(erased)
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

    /// Every row under `prefix`, stacked (`None` when there is none).
    pub async fn read_frames(&self, prefix: &str) -> Result<Option<DataFrame>> {
        self.read_frames_in(prefix, &DateRange::default()).await
    }

    /// The rows under `prefix` whose date partition lies in `range`.
    pub async fn read_frames_in(
        &self,
        prefix: &str,
        range: &DateRange,
    ) -> Result<Option<DataFrame>> {
        // A compaction may replace files between the listing and the reads: list again.
        let mut attempts = 0;
        let frames = loop {
            attempts += 1;
            let mut frames = Vec::new();
            let mut vanished = false;
            for path in self.live_files(prefix, range).await? {
                match self.get_frame(&path).await? {
                    Some(frame) => frames.push(frame.lazy()),
                    None => {
                        vanished = true;
                        break;
                    }
                }
            }
            if !vanished || attempts == 3 {
                break frames;
            }
        };
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

    /// The files that hold the rows under `prefix` in `range`: per date partition, its
    /// newest compacted file and the batch files after it.
    async fn live_files(&self, prefix: &str, range: &DateRange) -> Result<Vec<String>> {
        let mut partitions: std::collections::BTreeMap<String, Partition> = Default::default();
        for path in self.list(prefix).await? {
            if !path.ends_with(".parquet") {
                continue;
            }
            let (dir, _) = path.rsplit_once('/').unwrap_or(("", &path));
            if !range.contains(partition_date(dir)) {
                continue;
            }
            partitions.entry(dir.to_owned()).or_default().add(path);
        }
        Ok(partitions.into_values().flat_map(Partition::live).collect())
    }

    /// In each date partition under `prefix` holding at least `min_files` batch files up
    /// to batch `upto` (the durable ones), merges them and the partition's compacted file
    /// into one new compacted file, then removes what it replaced. Returns how many
    /// partitions were compacted. Run by the partition's only writer, between its batches.
    pub async fn compact(&self, prefix: &str, upto: u64, min_files: usize) -> Result<usize> {
        let mut partitions: std::collections::BTreeMap<String, Partition> = Default::default();
        for path in self.list(prefix).await? {
            if path.ends_with(".parquet") {
                let (dir, _) = path.rsplit_once('/').unwrap_or(("", &path));
                partitions.entry(dir.to_owned()).or_default().add(path);
            }
        }
        let mut compacted = 0;
        for (dir, partition) in partitions {
            // Leftovers of a compaction cut short first: covered files are garbage.
            for path in partition.covered() {
                self.delete(&path).await?;
            }
            let batches: Vec<(u64, String)> = partition
                .batches_after_compaction()
                .into_iter()
                .filter(|(n, _)| *n <= upto)
                .collect();
            if batches.len() < min_files.max(1) {
                continue;
            }
            let last = batches.iter().map(|(n, _)| *n).max().unwrap_or_default();
            let mut inputs: Vec<String> = partition.newest_compacted().into_iter().collect();
            inputs.extend(batches.iter().map(|(_, path)| path.clone()));
            let mut frames = Vec::new();
            for path in &inputs {
                if let Some(frame) = self.get_frame(path).await? {
                    frames.push(frame.lazy());
                }
            }
            let args = UnionArgs {
                to_supertypes: true,
                ..UnionArgs::default()
            };
            let merged = mlops_runtime::cpu::run(move || concat(frames, args)?.collect()).await?;
            let mut merged = merged;
            self.put_frame(&format!("{dir}/{}", compacted_file(last)), &mut merged)
                .await?;
            for path in inputs {
                self.delete(&path).await?;
            }
            compacted += 1;
        }
        Ok(compacted)
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

/// The file holding every batch up to `last` of one date partition.
pub fn compacted_file(last: u64) -> String {
    format!("compact-{last:012}.parquet")
}

/// `compact-000000000042.parquet` → 42.
pub fn compacted_number(path: &str) -> Option<u64> {
    let name = path.rsplit('/').next()?;
    name.strip_prefix("compact-")?
        .strip_suffix(".parquet")?
        .parse()
        .ok()
}

/// `…/date=2026-11-26` → `2026-11-26`; `""` for a directory that is not a date partition.
fn partition_date(dir: &str) -> &str {
    dir.rsplit('/')
        .next()
        .and_then(|name| name.strip_prefix("date="))
        .unwrap_or_default()
}

/// The dates (inclusive, `YYYY-MM-DD`) a read is limited to; unbounded by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DateRange {
    pub from: Option<String>,
    pub to: Option<String>,
}

impl DateRange {
    /// The dates of event times in `[start, end)` (milliseconds), each bound optional.
    pub fn of_millis(start: Option<i64>, end: Option<i64>) -> Self {
        let date = |ms: i64| {
            chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d").to_string())
        };
        Self {
            from: start.and_then(date),
            to: end.and_then(|end| date(end - 1)),
        }
    }

    /// Whether partition `date` may hold rows of the range (files outside any date
    /// partition always may).
    fn contains(&self, date: &str) -> bool {
        if date.is_empty() {
            return true;
        }
        self.from.as_deref().is_none_or(|from| date >= from)
            && self.to.as_deref().is_none_or(|to| date <= to)
    }
}

/// The files of one directory, sorted into batch files, compacted files and others.
#[derive(Debug, Default)]
struct Partition {
    batches: Vec<(u64, String)>,
    compacted: Vec<(u64, String)>,
    other: Vec<String>,
}

impl Partition {
    fn add(&mut self, path: String) {
        if let Some(n) = batch_number(&path) {
            self.batches.push((n, path));
        } else if let Some(n) = compacted_number(&path) {
            self.compacted.push((n, path));
        } else {
            self.other.push(path);
        }
    }

    fn newest(&self) -> Option<&(u64, String)> {
        self.compacted.iter().max_by_key(|(n, _)| *n)
    }

    fn newest_compacted(&self) -> Option<String> {
        self.newest().map(|(_, path)| path.clone())
    }

    fn covered_up_to(&self) -> Option<u64> {
        self.newest().map(|(n, _)| *n)
    }

    fn batches_after_compaction(&self) -> Vec<(u64, String)> {
        let covered = self.covered_up_to();
        self.batches
            .iter()
            .filter(|(n, _)| covered.is_none_or(|c| *n > c))
            .cloned()
            .collect()
    }

    /// Files the newest compacted file makes redundant.
    fn covered(&self) -> Vec<String> {
        let Some(covered) = self.covered_up_to() else {
            return Vec::new();
        };
        let older = self.compacted.iter().filter(|(n, _)| *n < covered);
        let batches = self.batches.iter().filter(|(n, _)| *n <= covered);
        older.chain(batches).map(|(_, path)| path.clone()).collect()
    }

    /// What a read takes: the newest compacted file, the batch files after it, others.
    fn live(self) -> Vec<String> {
        let mut live: Vec<String> = self.newest_compacted().into_iter().collect();
        live.extend(
            self.batches_after_compaction()
                .into_iter()
                .map(|(_, path)| path),
        );
        live.extend(self.other);
        live
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    /// 2026-11-26T00:00:00Z.
    const D0: i64 = 1_795_651_200_000;

    /// Batch `n`: one row on each of two days.
    fn batch(n: i64) -> DataFrame {
        df![
            "event_time" => [D0 + n, D0 + DAY + n],
            "value" => [n, 1000 + n],
        ]
        .unwrap()
    }

    async fn values(store: &FeatureStore, prefix: &str, range: &DateRange) -> Vec<i64> {
        let frame = store.read_frames_in(prefix, range).await.unwrap().unwrap();
        let mut values: Vec<i64> = frame
            .column("value")
            .unwrap()
            .i64()
            .unwrap()
            .into_no_null_iter()
            .collect();
        values.sort_unstable();
        values
    }

    fn files(dir: &std::path::Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn offline_files_are_encrypted_at_rest_when_keys_are_given() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys.json");
        std::fs::write(
            &keys,
            format!(
                r#"{{"current": "k1", "keys": {{"k1": "{}"}}}}"#,
                "5a".repeat(32)
            ),
        )
        .unwrap();
        let sealer = mlops_service::sealing::Sealer::from_file(&keys).unwrap();
        let location = dir.path().join("store").display().to_string();
        let store = FeatureStore::open(&location)
            .unwrap()
            .with_sealer(Some(Arc::new(sealer)));
        let prefix = "offline/spend/v1/";
        store.put_batch_by_date(prefix, &batch(1), 1).await.unwrap();
        let written = std::fs::read_dir(dir.path().join("store/offline/spend/v1/date=2026-11-26"))
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let stored = std::fs::read(&written).unwrap();
        assert!(stored.starts_with(b"MLOPSENC1") && !stored.windows(4).any(|w| w == b"PAR1"));
        assert_eq!(
            values(&store, prefix, &DateRange::default()).await,
            [1, 1001]
        );
        // Without the keys, the files cannot be read, and the error says why.
        let keyless = FeatureStore::open(&location).unwrap();
        let error = keyless.read_frames(prefix).await.unwrap_err().to_string();
        assert!(error.contains("encrypted"), "{error}");
    }

    #[tokio::test]
    async fn compaction_keeps_every_row_once_and_reads_skip_what_it_covers() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeatureStore::open(&dir.path().display().to_string()).unwrap();
        let prefix = "offline/spend/v1/";
        for n in 1..=20 {
            store
                .put_batch_by_date(prefix, &batch(n), n as u64)
                .await
                .unwrap();
        }
        let all: Vec<i64> = (1..=20).chain(1001..=1020).collect();
        assert_eq!(values(&store, prefix, &DateRange::default()).await, all);

        // Batches up to the checkpoint (15) are merged; later ones stay as they are.
        assert_eq!(store.compact(prefix, 15, 8).await.unwrap(), 2);
        let day = dir.path().join("offline/spend/v1/date=2026-11-26");
        let mut expected: Vec<String> = (16..=20).map(batch_file).collect();
        expected.push(compacted_file(15));
        assert_eq!(files(&day), expected);
        assert_eq!(values(&store, prefix, &DateRange::default()).await, all);

        // A compaction cut short leaves covered files behind: reads ignore them, and the
        // next compaction removes them.
        store
            .put_frame(
                &format!("{prefix}date=2026-11-26/{}", batch_file(3)),
                &mut batch(3),
            )
            .await
            .unwrap();
        assert_eq!(values(&store, prefix, &DateRange::default()).await, all);
        store.compact(prefix, 20, 8).await.unwrap();
        assert_eq!(
            files(&day),
            expected,
            "too few new batches to compact again"
        );
        assert!(!files(&day).contains(&batch_file(3)));

        // Below the threshold nothing changes; at it, the newest compacted file is merged too.
        assert_eq!(store.compact(prefix, 20, 5).await.unwrap(), 2);
        assert_eq!(files(&day), [compacted_file(20)]);
        assert_eq!(values(&store, prefix, &DateRange::default()).await, all);
    }

    #[tokio::test]
    async fn a_read_limited_to_dates_takes_only_their_partitions() {
        let dir = tempfile::tempdir().unwrap();
        let store = FeatureStore::open(&dir.path().display().to_string()).unwrap();
        let prefix = "labels/";
        for n in 1..=3 {
            store
                .put_batch_by_date(prefix, &batch(n), n as u64)
                .await
                .unwrap();
        }
        let second_day = DateRange::of_millis(Some(D0 + DAY), Some(D0 + 2 * DAY));
        assert_eq!(second_day.from.as_deref(), Some("2026-11-27"));
        assert_eq!(second_day.to.as_deref(), Some("2026-11-27"));
        assert_eq!(
            values(&store, prefix, &second_day).await,
            [1001, 1002, 1003]
        );
        let up_to_first = DateRange::of_millis(None, Some(D0 + DAY));
        assert_eq!(values(&store, prefix, &up_to_first).await, [1, 2, 3]);
    }
}
