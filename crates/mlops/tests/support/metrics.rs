//! What an SRE's Prometheus and Grafana read: the metric names of the alert rules and
//! dashboards, checked against the families the services really export.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use serde_json::Value;

use super::Ports;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Metric families a `/metrics` page declares (`# TYPE <name> <type>`).
pub(crate) fn families(page: &str) -> BTreeSet<String> {
    page.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The platform's metric names an expression uses (series names, with the suffixes
/// Prometheus adds to counters and histograms taken off).
pub(crate) fn metrics_in(expression: &str) -> BTreeSet<String> {
    expression
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|t| t.starts_with("mlops_"))
        .map(|t| {
            ["_total", "_bucket", "_sum", "_count", "_created"]
                .iter()
                .find_map(|suffix| t.strip_suffix(suffix))
                .unwrap_or(t)
                .to_owned()
        })
        .collect()
}

/// Every PromQL expression of the alert rules and of the dashboards, with where it is.
pub(crate) fn expressions() -> Vec<(String, String)> {
    let mut out = Vec::new();
    let rules: serde_yaml_ng::Value = serde_yaml_ng::from_str(
        &std::fs::read_to_string(root().join("infra/prometheus/alerts.yml")).unwrap(),
    )
    .unwrap();
    for group in rules["groups"].as_sequence().unwrap() {
        for rule in group["rules"].as_sequence().unwrap() {
            out.push((
                format!("alert {}", rule["alert"].as_str().unwrap()),
                rule["expr"].as_str().unwrap().to_owned(),
            ));
        }
    }
    let dashboards = root().join("infra/grafana/dashboards");
    let mut files: Vec<_> = std::fs::read_dir(&dashboards)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "overview, a model's health, the Kafka flow");
    for file in files {
        let dashboard: Value = serde_json::from_slice(&std::fs::read(&file).unwrap())
            .unwrap_or_else(|e| panic!("{file:?}: {e}"));
        for panel in dashboard["panels"].as_array().unwrap() {
            assert_eq!(
                panel["datasource"]["uid"], "prometheus",
                "{file:?}: the provisioned data source"
            );
            for target in panel["targets"].as_array().unwrap() {
                out.push((
                    format!("{} / {}", dashboard["title"], panel["title"]),
                    target["expr"].as_str().unwrap().to_owned(),
                ));
            }
        }
        for variable in dashboard["templating"]["list"].as_array().unwrap() {
            out.push((
                format!("{} / ${}", dashboard["title"], variable["name"]),
                variable["definition"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ));
        }
    }
    out
}

/// The `/metrics` page of the service on `port` (open to anyone by default).
pub(crate) async fn page(port: u16) -> Result<String, String> {
    reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map_err(|e| e.to_string())?
        .text()
        .await
        .map_err(|e| e.to_string())
}

/// Every metric family the six services declare on their `/metrics` now.
pub(crate) async fn exported(ports: &Ports) -> BTreeSet<String> {
    let mut exported = BTreeSet::new();
    for (service, port) in &ports.services {
        let page = page(*port).await.unwrap();
        let declared = families(&page);
        assert!(
            declared.contains("mlops_http_requests"),
            "{service}: {declared:?}"
        );
        exported.extend(declared);
    }
    exported
}

/// Fails naming every alert rule or dashboard panel that uses a metric not in `exported`.
pub(crate) fn assert_only_exported_names(exported: &BTreeSet<String>) {
    let expressions = expressions();
    assert!(expressions.len() > 30, "{expressions:?}");
    let unknown: Vec<String> = expressions
        .iter()
        .flat_map(|(place, expression)| {
            metrics_in(expression)
                .into_iter()
                .filter(|m| !exported.contains(m))
                .map(move |m| format!("{place}: {m}"))
        })
        .collect();
    assert!(
        unknown.is_empty(),
        "names no service exports: {unknown:#?}\nexported: {exported:?}"
    );
}
