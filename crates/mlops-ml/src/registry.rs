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

/// `response` if it is a success; otherwise why not (see [`failed`]).
fn answered(response: reqwest::Response) -> Result<reqwest::Response, String> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    Err(failed(status, response.url().path(), ""))
}

/// Why a request for `what` answered `status` (not a success): a gateway's or an
/// overloaded registry's answer (502, 503, 504) is worded as unreachable — worth trying
/// again, [`is_unreachable`] — any other as the registry's refusal. `body`, when not
/// empty, is what the registry said.
fn failed(status: StatusCode, what: &str, body: &str) -> String {
    let said = if body.is_empty() {
        String::new()
    } else {
        format!(": {body}")
    };
    if matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    ) {
        format!("{UNREACHABLE}: {what} answered {status}{said}")
    } else {
        format!("the model registry refused {what}: {status}{said}")
    }
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
            .map_err(unreachable)
            .and_then(answered)?
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
        answered(response)?
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
            // The artifact's own errors name the version.
            .map_err(|e| format!("the production version of {model}: {e}"))
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
            let what = format!("the artifact of version {version}");
            return Err(failed(status, &what, &String::from_utf8_lossy(&bytes)));
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
            // Answered 502–504, the version may have been registered all the same (a
            // gateway's 504): sent again, the registration names its run and the registry
            // answers with it.
            return Err(failed(status, "the registration", &body.to_string()));
        }
        body["version"]
            .as_i64()
            .ok_or_else(|| format!("the registry's answer names no version: {body}"))
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    fn http() -> reqwest::Client {
        reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(10))
            .build()
            .unwrap()
    }

    /// A server answering every request with `status` and nothing else; its base URL.
    async fn answering(status: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // A plain task: the test's runtime ends it.
        #[allow(clippy::disallowed_methods)]
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut request = Vec::new();
                let mut buffer = [0; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buffer).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buffer[..n]),
                    }
                }
                let answer =
                    format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
                let _ = stream.write_all(answer.as_bytes()).await;
            }
        });
        url
    }

    #[tokio::test]
    async fn only_a_registry_not_reached_or_unavailable_is_worth_trying_again() {
        for (status, again) in [
            ("503 Service Unavailable", true),
            ("502 Bad Gateway", true),
            ("504 Gateway Timeout", true),
            ("403 Forbidden", false),
            ("500 Internal Server Error", false),
        ] {
            let client = RegistryClient::new(http(), &answering(status).await);
            let error = client.production("fraud").await.unwrap_err();
            assert_eq!(is_unreachable(&error), again, "{status}: {error}");
            let error = client.artifact("fraud", 3).await.unwrap_err();
            assert_eq!(is_unreachable(&error), again, "{status}: {error}");
            assert!(error.contains("artifact of version 3"), "{error}");
            // A registration too: one answered 502–504 may have been made, and is sent
            // again (it names its run, so the registry answers with the same version).
            let client = RegistryClient::new(http(), &answering(status).await);
            let registration = json!({"artifact": {"model_name": "fraud"}});
            let error = client.register(registration).await.unwrap_err();
            assert_eq!(is_unreachable(&error), again, "{status}: {error}");
        }
        // Nothing listens on the discard port.
        let client = RegistryClient::new(http(), "http://127.0.0.1:9");
        let error = client.production("fraud").await.unwrap_err();
        assert!(is_unreachable(&error), "{error}");
    }
}
