//! A real Jaeger (`mlops jaeger`, built once from the Go module proxy) on free ports, read
//! back through its own query API the way an SRE's tools do.

use std::{
    collections::{HashMap, HashSet},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mlops_testkit::free_port;
use serde_json::Value;

pub(crate) struct Jaeger {
    child: Child,
    pub(crate) otlp_grpc: u16,
    pub(crate) otlp_http: u16,
    pub(crate) ui: u16,
    http: reqwest::Client,
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One trace as Jaeger's query API returns it, with its spans' services resolved.
#[derive(Debug, Clone)]
pub(crate) struct Trace {
    pub(crate) id: String,
    pub(crate) spans: Vec<Span>,
}

#[derive(Debug, Clone)]
pub(crate) struct Span {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) service: String,
    /// The parent span (a CHILD_OF reference), when there is one.
    pub(crate) parent: Option<String>,
    /// Spans of other traces this one links to (FOLLOWS_FROM references).
    pub(crate) links: Vec<(String, String)>,
    pub(crate) tags: HashMap<String, Value>,
}

impl Trace {
    fn parse(trace: &Value) -> Self {
        let processes: HashMap<&str, &str> = trace["processes"]
            .as_object()
            .map(|p| {
                p.iter()
                    .map(|(id, process)| {
                        (
                            id.as_str(),
                            process["serviceName"].as_str().unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let id = trace["traceID"].as_str().unwrap_or_default().to_owned();
        let spans = trace["spans"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|span| {
                let references = span["references"].as_array().cloned().unwrap_or_default();
                let reference = |kind: &str| {
                    references
                        .iter()
                        .filter(|r| r["refType"] == kind)
                        .map(|r| {
                            (
                                r["traceID"].as_str().unwrap_or_default().to_owned(),
                                r["spanID"].as_str().unwrap_or_default().to_owned(),
                            )
                        })
                        .collect::<Vec<_>>()
                };
                Span {
                    id: span["spanID"].as_str().unwrap_or_default().to_owned(),
                    name: span["operationName"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    service: processes
                        .get(span["processID"].as_str().unwrap_or_default())
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                    parent: reference("CHILD_OF").into_iter().next().map(|(_, s)| s),
                    links: reference("FOLLOWS_FROM"),
                    tags: span["tags"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|t| Some((t["key"].as_str()?.to_owned(), t["value"].clone())))
                        .collect(),
                }
            })
            .collect();
        Self { id, spans }
    }

    pub(crate) fn services(&self) -> HashSet<&str> {
        self.spans.iter().map(|s| s.service.as_str()).collect()
    }

    pub(crate) fn named<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Span> + 'a {
        self.spans.iter().filter(move |s| s.name == name)
    }

    /// Spans whose parent is not in the trace (a trace parented throughout has one).
    pub(crate) fn roots(&self) -> Vec<&Span> {
        let ids: HashSet<&str> = self.spans.iter().map(|s| s.id.as_str()).collect();
        self.spans
            .iter()
            .filter(|s| s.parent.as_deref().is_none_or(|p| !ids.contains(p)))
            .collect()
    }

    /// The chain of span names from `span` up to its root.
    pub(crate) fn ancestry(&self, span: &Span) -> Vec<String> {
        let by_id: HashMap<&str, &Span> = self.spans.iter().map(|s| (s.id.as_str(), s)).collect();
        let mut chain = vec![format!("{}:{}", span.service, span.name)];
        let mut at = span;
        while let Some(parent) = at.parent.as_deref().and_then(|p| by_id.get(p)) {
            chain.push(format!("{}:{}", parent.service, parent.name));
            at = parent;
        }
        chain
    }
}

impl Jaeger {
    /// Starts Jaeger with its configuration in `dir` and waits for its query API.
    pub(crate) async fn start(dir: &Path) -> Self {
        let (otlp_grpc, otlp_http, ui) = (free_port(), free_port(), free_port());
        let log = std::fs::File::create(dir.join("jaeger.log")).expect("jaeger log");
        let child = Command::new(env!("CARGO_BIN_EXE_mlops"))
            .args(["jaeger", "--config-dir"])
            .arg(dir.join("jaeger"))
            .args(["--otlp-grpc-port", &otlp_grpc.to_string()])
            .args(["--otlp-http-port", &otlp_http.to_string()])
            .args(["--ui-port", &ui.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("mlops jaeger");
        let jaeger = Self {
            child,
            otlp_grpc,
            otlp_http,
            ui,
            http: reqwest::Client::new(),
        };
        // A first start may build Jaeger (tests/run.sh builds it before the suite).
        let limit = Duration::from_secs(900);
        let started = Instant::now();
        loop {
            if jaeger.get("/api/services").await.is_some() {
                return jaeger;
            }
            let log = std::fs::read_to_string(dir.join("jaeger.log")).unwrap_or_default();
            assert!(
                started.elapsed() < limit,
                "Jaeger's query API did not answer within {limit:?}:\n{log}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn get(&self, path: &str) -> Option<Value> {
        let response = self
            .http
            .get(format!("http://127.0.0.1:{}{path}", self.ui))
            .send()
            .await
            .ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.json().await.ok()
    }

    /// `GET /api/traces/{id}`.
    pub(crate) async fn trace(&self, id: &str) -> Option<Trace> {
        let body = self.get(&format!("/api/traces/{id}")).await?;
        body["data"].as_array()?.first().map(Trace::parse)
    }

    /// `GET /api/traces?service=&operation=` — the latest `limit` traces.
    pub(crate) async fn search(&self, service: &str, operation: &str, limit: u32) -> Vec<Trace> {
        let operation: String = url_encode(operation);
        let Some(body) = self
            .get(&format!(
                "/api/traces?service={service}&operation={operation}&limit={limit}&lookback=1h"
            ))
            .await
        else {
            return Vec::new();
        };
        body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(Trace::parse)
            .collect()
    }
}

fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
