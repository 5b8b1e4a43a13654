//! Where services keep files: one object store opened from a URL, so the same code writes
//! to a local directory on the embedded default and to S3 in production.

use std::sync::Arc;

use object_store::{ObjectStore, prefix::PrefixStore};

/// `url` is `s3://bucket/prefix` (credentials and endpoint from the standard `AWS_*`
/// variables), `file:///dir`, or a plain directory path (created when missing).
pub fn open(url: &str) -> Result<Arc<dyn ObjectStore>, object_store::Error> {
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let s3 = object_store::aws::AmazonS3Builder::from_env()
            .with_bucket_name(bucket)
            .build()?;
        return Ok(if prefix.is_empty() {
            Arc::new(s3)
        } else {
            Arc::new(PrefixStore::new(s3, prefix))
        });
    }
    let dir = url.strip_prefix("file://").unwrap_or(url);
    std::fs::create_dir_all(dir).map_err(|e| object_store::Error::Generic {
        store: "LocalFileSystem",
        source: format!("cannot create {dir}: {e}").into(),
    })?;
    Ok(Arc::new(
        object_store::local::LocalFileSystem::new_with_prefix(dir)?,
    ))
}
