//! The model registry's REST API as training and serving use it: models and their
//! production and canary versions, artifacts verified against the registry's public key
//! before they are read, and registering a version that passed the gate.

use crate::ModelArtifact;
use ed25519_dalek::VerifyingKey;
use mlops_telemetry::Traced;
use reqwest::StatusCode;
use serde_json::{Value as Json, json};
use tokio::sync::OnceCell;

pub struct RegistryClient {
    http: reqwest::Client,
    url: String,
    key: OnceCell<VerifyingKey>,
}

const UNREACHABLE: &str = "the model registry is unreachable";

fn unreachable(e: reqwest::Error) -> String {
    format!("{UNREACHABLE}: {e}")
}

/// Whether `error` (from this client) says the registry was not reached or failed to
/// answer — worth trying again later — rather than that it refused.
pub fn is_unreachable(error: &str) -> bool {
    error.contains(UNREACHABLE)
}

impl RegistryClient {
    pub fn new(http: reqwest::Client, url: &str) -> Self {
        Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            key: OnceCell::new(),
        }
    }

    /// `GET <path>`'s JSON, when the registry answers with a success.
    async fn get_json(&self, path: &str) -> Result<Json, String> {
        self.http
            .get(format!("{}{path}", self.url))
            .traced()
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(unreachable)?
            .json()
            .await
            .map_err(unreachable)
    }

    /// The registry's artifact-signing key (`GET /v1/signing-key`), fetched once.
    pub async fn signing_key(&self) -> Result<VerifyingKey, String> {
        self.key
            .get_or_try_init(|| async {
                let body = self.get_json("/v1/signing-key").await?;
                let bytes = body["public_key"]
                    .as_str()
                    .and_then(|h| hex::decode(h).ok())
                    .and_then(|b| <[u8; 32]>::try_from(b).ok())
                    .ok_or_else(|| {
                        format!("the registry's signing key is not 32 hex bytes: {body}")
                    })?;
                VerifyingKey::from_bytes(&bytes).map_err(|e| format!("signing key: {e}"))
            })
            .await
            .copied()
    }

    /// Every model's summary (as [`Self::model`] gives one), in one request.
    pub async fn models(&self) -> Result<Vec<Json>, String> {
        let body = self.get_json("/v1/models").await?;
        Ok(body["models"].as_array().cloned().unwrap_or_default())
    }

    /// The summary of `model` (`production`, `canary` with its `percent`, `lifecycle`
    /// with its `last_sequence`), or `None` when there is no such model.
    pub async fn model(&self, model: &str) -> Result<Option<Json>, String> {
        let response = self
            .http
            .get(format!("{}/v1/models/{model}", self.url))
            .traced()
            .send()
            .await
            .map_err(unreachable)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        response
            .error_for_status()
            .map_err(unreachable)?
            .json()
            .await
            .map(Some)
            .map_err(unreachable)
    }

    /// The production version of `model` and its verified artifact, if it has one.
    pub async fn production(&self, model: &str) -> Result<Option<(i64, ModelArtifact)>, String> {
        let Some(body) = self.model(model).await? else {
            return Ok(None);
        };
        let Some(version) = body["production"].as_i64() else {
            return Ok(None);
        };
        self.artifact(model, version)
            .await
            .map(|artifact| Some((version, artifact)))
            .map_err(|e| format!("production {e}"))
    }

    /// Version `version` of `model`'s artifact, verified.
    pub async fn artifact(&self, model: &str, version: i64) -> Result<ModelArtifact, String> {
        let response = self
            .http
            .get(format!(
                "{}/v1/models/{model}/versions/{version}/artifact",
                self.url
            ))
            .traced()
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(unreachable)?;
        if !status.is_success() {
            return Err(format!(
                "the artifact of version {version} could not be fetched ({status}): {}",
                String::from_utf8_lossy(&bytes)
            ));
        }
        let key = self.signing_key().await?;
        crate::artifact::open(&bytes, &key).map_err(|e| format!("version {version} refused: {e}"))
    }

    /// Registers `artifact` with its lineage; returns the version number.
    pub async fn register(&self, registration: Json) -> Result<i64, String> {
        let model = registration["artifact"]["model_name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let response = self
            .http
            .post(format!("{}/v1/models/{model}/versions", self.url))
            .traced()
            .json(&registration)
            .send()
            .await
            .map_err(unreachable)?;
        let status = response.status();
        let body: Json = response
            .json()
            .await
            .unwrap_or_else(|e| json!(e.to_string()));
        if !status.is_success() {
            return Err(format!(
                "the registry refused the version ({status}): {body}"
            ));
        }
        body["version"]
            .as_i64()
            .ok_or_else(|| format!("the registry's answer names no version: {body}"))
    }
}
