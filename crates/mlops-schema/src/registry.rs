//! The platform's one client of a Confluent-compatible Schema Registry: every call it
//! makes, each with a timeout, transient failures retried with backoff, and answers
//! classified so callers can tell "retry later" from "never".

use std::time::Duration;

use serde::Deserialize;
use serde_json::json;

const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// How a registry call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// Unreachable, timed out or a server error, still so after the retries: try later.
    #[error("schema registry unavailable: {0}")]
    Unavailable(String),
    /// No such subject, version or schema id (404).
    #[error("{0}")]
    NotFound(String),
    /// The schema breaks the subject's compatibility rule (409).
    #[error("{0}")]
    Incompatible(String),
    /// The schema is not valid (422).
    #[error("{0}")]
    Invalid(String),
}

/// A schema as registered under a subject.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Registered {
    pub id: u32,
    pub version: i32,
    pub schema: String,
}

/// Where a schema id is registered: one `(subject, version)` per use.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Usage {
    pub subject: String,
    pub version: i32,
}

#[derive(Debug, Clone)]
pub struct SchemaRegistry {
    base: String,
    http: reqwest::Client,
    attempts: u32,
}

impl SchemaRegistry {
    /// `timeout` bounds each request; a transient failure is tried `attempts` times in all.
    pub fn new(url: &str, timeout: Duration, attempts: u32) -> Result<Self, RegistryError> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .build()
            .map_err(|e| RegistryError::Unavailable(e.to_string()))?;
        Ok(Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
            attempts: attempts.max(1),
        })
    }

    /// On a client of the caller's (its timeouts, the credentials it presents).
    pub fn with_client(url: &str, http: reqwest::Client, attempts: u32) -> Self {
        Self {
            base: url.trim_end_matches('/').to_owned(),
            http,
            attempts: attempts.max(1),
        }
    }

    pub fn url(&self) -> &str {
        &self.base
    }

    /// `POST /subjects/{subject}/versions`: registers `schema` (or finds it) and returns its id.
    pub async fn register(&self, subject: &str, schema: &str) -> Result<u32, RegistryError> {
        #[derive(Deserialize)]
        struct Id {
            id: u32,
        }
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let body = json!({ "schema": schema });
        let id: Id = self.call(|http| http.post(&url).json(&body)).await?;
        Ok(id.id)
    }

    /// `POST /subjects/{subject}`: the version of `schema` under `subject`.
    pub async fn lookup(&self, subject: &str, schema: &str) -> Result<Registered, RegistryError> {
        let url = format!("{}/subjects/{subject}", self.base);
        let body = json!({ "schema": schema });
        self.call(|http| http.post(&url).json(&body)).await
    }

    /// `GET /subjects/{subject}/versions/latest`.
    pub async fn latest(&self, subject: &str) -> Result<Registered, RegistryError> {
        let url = format!("{}/subjects/{subject}/versions/latest", self.base);
        self.call(|http| http.get(&url)).await
    }

    /// `GET /schemas/ids/{id}`: the schema text of `id`.
    pub async fn schema(&self, id: u32) -> Result<String, RegistryError> {
        #[derive(Deserialize)]
        struct Text {
            schema: String,
        }
        let url = format!("{}/schemas/ids/{id}", self.base);
        let text: Text = self.call(|http| http.get(&url)).await?;
        Ok(text.schema)
    }

    /// `GET /schemas/ids/{id}/versions`: every subject and version that use `id`.
    pub async fn usages(&self, id: u32) -> Result<Vec<Usage>, RegistryError> {
        let url = format!("{}/schemas/ids/{id}/versions", self.base);
        self.call(|http| http.get(&url)).await
    }

    /// Sends the request `build` makes, retrying what may pass on a second try.
    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1;
        loop {
            match self.once(build(&self.http)).await {
                Err(RegistryError::Unavailable(reason)) if attempt < self.attempts => {
                    tracing::debug!(attempt, %reason, "schema registry call failed, retrying");
                    tokio::time::sleep(backoff).await;
                    backoff *= 4;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<T, RegistryError> {
        let unavailable = |e: reqwest::Error| RegistryError::Unavailable(e.to_string());
        let response = request
            .header(reqwest::header::ACCEPT, CONTENT_TYPE)
            .send()
            .await
            .map_err(unavailable)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(unavailable);
        }
        // Confluent's error body: {"error_code": 40401, "message": "..."}.
        let text = response.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|body| body["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| format!("{status}: {text}"));
        Err(match status.as_u16() {
            404 => RegistryError::NotFound(message),
            409 => RegistryError::Incompatible(message),
            422 => RegistryError::Invalid(message),
            _ => RegistryError::Unavailable(format!("{status}: {message}")),
        })
    }
}

#[cfg(test)]
#[allow(clippy::disallowed_methods)] // a plain task plays the registry's HTTP endpoint
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An HTTP endpoint that answers each connection with the next of `answers`
    /// (status line and JSON body), and counts the requests it saw.
    async fn endpoint(answers: Vec<(&'static str, &'static str)>) -> (String, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(AtomicUsize::new(0));
        let counter = seen.clone();
        tokio::spawn(async move {
            for (status, body) in answers {
                let (mut socket, _) = listener.accept().await.unwrap();
                let mut request = vec![0; 4096];
                let _ = socket.read(&mut request).await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                let response = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(response.as_bytes()).await.unwrap();
            }
        });
        (url, seen)
    }

    #[tokio::test]
    async fn a_server_error_is_retried_and_the_next_answer_used() {
        let (url, seen) = endpoint(vec![
            (
                "503 Service Unavailable",
                r#"{"error_code":50301,"message":"busy"}"#,
            ),
            ("200 OK", r#"{"id":7}"#),
        ])
        .await;
        let client = SchemaRegistry::new(&url, Duration::from_secs(5), 3).unwrap();
        assert_eq!(client.register("s-value", "\"string\"").await, Ok(7));
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn refusals_are_not_retried_and_keep_the_registrys_message() {
        let (url, seen) = endpoint(vec![
            (
                "409 Conflict",
                r#"{"error_code":409,"message":"incompatible: amount has no default"}"#,
            ),
            ("200 OK", r#"{"id":7}"#),
        ])
        .await;
        let client = SchemaRegistry::new(&url, Duration::from_secs(5), 3).unwrap();
        assert_eq!(
            client.register("s-value", "\"string\"").await,
            Err(RegistryError::Incompatible(
                "incompatible: amount has no default".into()
            ))
        );
        assert_eq!(seen.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn the_last_failure_is_reported_when_every_attempt_fails() {
        let (url, seen) = endpoint(vec![
            ("500 Internal Server Error", r#"{"message":"one"}"#),
            ("500 Internal Server Error", r#"{"message":"two"}"#),
        ])
        .await;
        let client = SchemaRegistry::new(&url, Duration::from_secs(5), 2).unwrap();
        let failure = client.latest("s-value").await.unwrap_err();
        assert_eq!(
            failure,
            RegistryError::Unavailable("500 Internal Server Error: two".into())
        );
        assert_eq!(seen.load(Ordering::SeqCst), 2);
    }
}
