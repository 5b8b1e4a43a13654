//! Which versions of which models this instance serves, and how it learns of changes:
//! rebuilt from the registry at start, then kept current by `models.lifecycle` events,
//! applied once each (by the model's sequence number). A version is loaded — its artifact
//! fetched, digest and signature verified, the model read — before it replaces anything,
//! and replacing is swapping one `Arc` under a short write lock: requests in flight keep
//! the version they started with, so a swap fails or drops no request.

use std::{
    collections::HashMap,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, Ordering},
    },
};

use mlops_events::{ModelLifecycleEvent, ModelStage};
use mlops_ml::{ModelArtifact, model::Model, registry::RegistryClient};
use tracing::{Instrument, info};

/// A version ready to answer.
#[derive(Debug)]
pub struct Loaded {
    pub version: i64,
    pub artifact: ModelArtifact,
    pub model: Model,
    /// Its fitted transforms compiled into a plan over columns, once.
    pub plan: mlops_ml::InputPlan,
    /// What its prediction log records carry, worked out once.
    pub log_columns: crate::predictions::LogColumns,
}

/// What a model serves now.
#[derive(Debug, Clone, Default)]
pub struct Deployment {
    pub production: Option<Arc<Loaded>>,
    /// The canary and its share of traffic, in percent.
    pub canary: Option<(Arc<Loaded>, f64)>,
    /// The last lifecycle sequence number reflected here.
    pub sequence: i64,
}

impl Deployment {
    /// The versions serving: production first, then the canary.
    pub fn serving(&self) -> impl Iterator<Item = &Arc<Loaded>> {
        self.production
            .iter()
            .chain(self.canary.iter().map(|(c, _)| c))
    }

    /// The loaded version `version`, if it serves.
    pub fn version(&self, version: i64) -> Option<Arc<Loaded>> {
        self.serving().find(|l| l.version == version).cloned()
    }
}

pub struct Deployments {
    models: RwLock<HashMap<String, Deployment>>,
    registry: RegistryClient,
    ready: AtomicBool,
}

impl Deployments {
    pub fn new(registry: RegistryClient) -> Self {
        Self {
            models: RwLock::default(),
            registry,
            ready: AtomicBool::new(false),
        }
    }

    /// Whether the state was rebuilt from the registry since start.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    pub fn get(&self, model: &str) -> Option<Deployment> {
        self.models.read().expect("deployments").get(model).cloned()
    }

    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .models
            .read()
            .expect("deployments")
            .keys()
            .cloned()
            .collect();
        names.sort();
        names
    }

    /// Version `version` of `model`, fetched, verified and read.
    async fn load(&self, model: &str, version: i64) -> Result<Arc<Loaded>, String> {
        if let Some(loaded) = self.get(model).and_then(|d| d.version(version)) {
            return Ok(loaded);
        }
        let artifact = self.registry.artifact(model, version).await?;
        let fitted: Model = serde_json::from_value(artifact.model.clone())
            .map_err(|e| format!("{model} version {version}: the model cannot be read: {e}"))?;
        Ok(Arc::new(Loaded {
            version,
            log_columns: crate::predictions::LogColumns::of(&artifact),
            plan: mlops_ml::InputPlan::of(&artifact),
            artifact,
            model: fitted,
        }))
    }

    /// Every model's production and canary versions, as the registry has them now.
    pub async fn rebuild(&self) -> Result<(), String> {
        for summary in self.registry.models().await? {
            let Some(name) = summary["name"].as_str().map(str::to_owned) else {
                continue;
            };
            let mut deployment = Deployment {
                sequence: summary["lifecycle"]["last_sequence"].as_i64().unwrap_or(0),
                ..Deployment::default()
            };
            if let Some(version) = summary["production"].as_i64() {
                deployment.production = Some(self.load(&name, version).await?);
            }
            if let Some(version) = summary["canary"]["version"].as_i64() {
                let percent = summary["canary"]["percent"].as_f64().unwrap_or(0.0);
                deployment.canary = Some((self.load(&name, version).await?, percent));
            }
            info!(model = %name, production = ?summary["production"], canary = ?summary["canary"]["version"], "model loaded");
            self.models
                .write()
                .expect("deployments")
                .insert(name, deployment);
        }
        self.ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Applies one lifecycle event; an event already reflected (same or lower sequence)
    /// changes nothing. `Err` when the version cannot be loaded (the state is unchanged).
    pub async fn apply(&self, event: &ModelLifecycleEvent) -> Result<bool, String> {
        let model = &event.model_name;
        let current = self.get(model).unwrap_or_default();
        if event.sequence <= current.sequence {
            return Ok(false);
        }
        let version = i64::from(event.version);
        let loaded = match event.stage {
            ModelStage::Production | ModelStage::Canary => Some(
                self.load(model, version)
                    .instrument(tracing::info_span!("load model", model = %model, version))
                    .await?,
            ),
            ModelStage::Candidate | ModelStage::Archived => None,
        };
        let swap = tracing::info_span!("swap", model = %model, version, stage = ?event.stage,
            sequence = event.sequence);
        let _swap = swap.enter();
        let mut models = self.models.write().expect("deployments");
        let deployment = models.entry(model.clone()).or_default();
        if event.sequence <= deployment.sequence {
            return Ok(false);
        }
        let is = |l: &Arc<Loaded>| l.version == version;
        match (event.stage, loaded) {
            (ModelStage::Production, Some(loaded)) => {
                if deployment.canary.as_ref().is_some_and(|(c, _)| is(c)) {
                    deployment.canary = None;
                }
                deployment.production = Some(loaded);
            }
            (ModelStage::Canary, Some(loaded)) => {
                if deployment.production.as_ref().is_some_and(is) {
                    deployment.production = None;
                }
                deployment.canary = Some((loaded, event.canary_percent.unwrap_or(0.0)));
            }
            _ => {
                if deployment.production.as_ref().is_some_and(is) {
                    deployment.production = None;
                }
                if deployment.canary.as_ref().is_some_and(|(c, _)| is(c)) {
                    deployment.canary = None;
                }
            }
        }
        deployment.sequence = event.sequence;
        info!(%model, version, stage = ?event.stage, sequence = event.sequence, "lifecycle applied");
        Ok(true)
    }
}
