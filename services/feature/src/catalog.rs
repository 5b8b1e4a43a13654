//! Immutable, numbered versions of each feature view. Declaring a view that differs from
//! its latest version mints the next version; declaring the same one again changes nothing.

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use crate::{
    spec::FeatureViewSpec,
    store::{FeatureStore, Result},
};

/// One version of a view, as stored at `views/<view>/v<N>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewVersion {
    pub name: String,
    pub version: i32,
    pub spec: FeatureViewSpec,
    /// Feature names and their Avro types, in row order.
    pub features: Vec<FeatureField>,
    /// Source columns read, with their polars type names.
    pub source_columns: Vec<(String, String)>,
    /// Avro schema of `features.<view>` records, and its registry id.
    pub schema: serde_json::Value,
    pub schema_id: u32,
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureField {
    pub name: String,
    /// `long`, `double`, `string` or `boolean`.
    #[serde(rename = "type")]
    pub avro_type: String,
}

impl ViewVersion {
    pub fn topic(&self) -> String {
        mlops_events::topics::features(&self.name)
    }

    /// Consumer group of this version's stream job: a new version computes from the start.
    pub fn group(&self) -> String {
        format!("feature.view.{}.v{}", self.name, self.version)
    }

    pub fn offline_prefix(&self) -> String {
        format!("offline/{}/v{}/", self.name, self.version)
    }

    pub fn state_prefix(&self) -> String {
        format!("state/views/{}/v{}/", self.name, self.version)
    }
}

pub struct Catalog {
    store: FeatureStore,
    /// Serialises version minting.
    lock: Mutex<()>,
}

impl Catalog {
    pub fn new(store: FeatureStore) -> Self {
        Self {
            store,
            lock: Mutex::new(()),
        }
    }

    /// Every version of `name`, oldest first.
    pub async fn versions(&self, name: &str) -> Result<Vec<ViewVersion>> {
        let mut versions = Vec::new();
        for path in self.store.list(&format!("views/{name}/")).await? {
            if let Some(version) = self.store.get_json::<ViewVersion>(&path).await? {
                versions.push(version);
            }
        }
        versions.sort_by_key(|v| v.version);
        Ok(versions)
    }

    pub async fn latest(&self, name: &str) -> Result<Option<ViewVersion>> {
        Ok(self.versions(name).await?.pop())
    }

    pub async fn version(&self, name: &str, version: i32) -> Result<Option<ViewVersion>> {
        self.store
            .get_json(&format!("views/{name}/v{version}.json"))
            .await
    }

    /// The latest version of every view.
    pub async fn all_latest(&self) -> Result<Vec<ViewVersion>> {
        let mut names: Vec<String> = self
            .store
            .list("views/")
            .await?
            .iter()
            .filter_map(|p| p.split('/').nth(1).map(str::to_owned))
            .collect();
        names.dedup();
        let mut latest = Vec::new();
        for name in names {
            if let Some(version) = self.latest(&name).await? {
                latest.push(version);
            }
        }
        Ok(latest)
    }

    /// Stores `spec` as a new version unless it equals the latest one. `build` derives the
    /// version (schema registration included) once its number is known. Returns the version
    /// and whether it is new.
    pub async fn declare<F, Fut, E>(
        &self,
        spec: FeatureViewSpec,
        build: F,
    ) -> std::result::Result<(ViewVersion, bool), E>
    where
        F: FnOnce(FeatureViewSpec, i32) -> Fut,
        Fut: Future<Output = std::result::Result<ViewVersion, E>>,
        E: From<crate::store::StoreError>,
    {
        let _guard = self.lock.lock().await;
        let latest = self.latest(&spec.name).await?;
        if let Some(latest) = latest.as_ref().filter(|l| l.spec == spec) {
            return Ok((latest.clone(), false));
        }
        let number = latest.map_or(1, |l| l.version + 1);
        let version = build(spec, number).await?;
        self.store
            .put_json(
                &format!("views/{}/v{}.json", version.name, version.version),
                &version,
            )
            .await?;
        Ok((version, true))
    }
}
