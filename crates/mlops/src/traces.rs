//! `mlops traces`: the platform's traces from Jaeger's query API, in the terminal — the
//! latest traces of a service, or one trace as a tree of spans (service, operation,
//! duration), parents before children. The Jaeger that `mlops jaeger` builds from Go
//! modules has no web UI (its assets are built from JavaScript sources that no package
//! registry publishes), so this is the way to look at the demo's traces without one.

use std::{collections::HashMap, process::ExitCode, time::Duration};

use serde_json::Value;

/// What to show.
pub(crate) struct Query {
    pub(crate) jaeger: String,
    pub(crate) trace: Option<String>,
    pub(crate) service: String,
    pub(crate) operation: Option<String>,
    pub(crate) limit: u32,
}

struct Span<'a> {
    id: &'a str,
    parent: Option<&'a str>,
    service: &'a str,
    name: &'a str,
    start: i64,
    micros: i64,
    links: usize,
}

fn spans(trace: &Value) -> Vec<Span<'_>> {
    let processes: HashMap<&str, &str> = trace["processes"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(id, p)| (id.as_str(), p["serviceName"].as_str().unwrap_or("?")))
        .collect();
    trace["spans"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| {
            let references = s["references"].as_array().map(Vec::as_slice).unwrap_or(&[]);
            Span {
                id: s["spanID"].as_str().unwrap_or_default(),
                parent: references
                    .iter()
                    .find(|r| r["refType"] == "CHILD_OF")
                    .and_then(|r| r["spanID"].as_str()),
                service: processes
                    .get(s["processID"].as_str().unwrap_or_default())
                    .copied()
                    .unwrap_or("?"),
                name: s["operationName"].as_str().unwrap_or_default(),
                start: s["startTime"].as_i64().unwrap_or_default(),
                micros: s["duration"].as_i64().unwrap_or_default(),
                links: references
                    .iter()
                    .filter(|r| r["refType"] == "FOLLOWS_FROM")
                    .count(),
            }
        })
        .collect()
}

/// One trace as an indented tree, children in the order they started.
pub(crate) fn tree(trace: &Value) -> String {
    let spans = spans(trace);
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.id).collect();
    let mut children: HashMap<Option<&str>, Vec<&Span<'_>>> = HashMap::new();
    for span in &spans {
        // A span whose parent is not in the trace (not exported, or remote) is a root.
        let parent = span.parent.filter(|p| ids.contains(p));
        children.entry(parent).or_default().push(span);
    }
    for list in children.values_mut() {
        list.sort_by_key(|s| s.start);
    }
    let mut out = format!(
        "trace {} — {} spans\n",
        trace["traceID"].as_str().unwrap_or_default(),
        spans.len()
    );
    let mut stack: Vec<(&Span<'_>, usize)> = children
        .get(&None)
        .into_iter()
        .flatten()
        .rev()
        .map(|s| (*s, 0))
        .collect();
    while let Some((span, depth)) = stack.pop() {
        let links = if span.links > 0 {
            format!("  (links to {})", span.links)
        } else {
            String::new()
        };
        out.push_str(&format!(
            "{}{:<11} {}  {:.1} ms{links}\n",
            "  ".repeat(depth),
            span.service,
            span.name,
            span.micros as f64 / 1000.0
        ));
        for child in children.get(&Some(span.id)).into_iter().flatten().rev() {
            stack.push((child, depth + 1));
        }
    }
    out
}

/// One line per trace: id, root span, span count, services.
fn summary(trace: &Value) -> String {
    let spans = spans(trace);
    let ids: std::collections::HashSet<&str> = spans.iter().map(|s| s.id).collect();
    let root = spans
        .iter()
        .filter(|s| s.parent.is_none_or(|p| !ids.contains(p)))
        .min_by_key(|s| s.start);
    let mut services: Vec<&str> = spans.iter().map(|s| s.service).collect();
    services.sort_unstable();
    services.dedup();
    format!(
        "{}  {:<40} {:>4} spans  {}",
        trace["traceID"].as_str().unwrap_or_default(),
        root.map(|r| format!("{}: {}", r.service, r.name))
            .unwrap_or_default(),
        spans.len(),
        services.join(", ")
    )
}

pub(crate) fn main(query: Query) -> ExitCode {
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    runtime.block_on(async move {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(10))
            .build()
            .expect("HTTP client");
        let base = query.jaeger.trim_end_matches('/');
        let url = match &query.trace {
            Some(id) => format!("{base}/api/traces/{id}"),
            None => {
                let mut url =
                    reqwest::Url::parse(&format!("{base}/api/traces")).map_err(|e| e.to_string());
                if let Ok(url) = &mut url {
                    url.query_pairs_mut()
                        .append_pair("service", &query.service)
                        .append_pair("limit", &query.limit.to_string())
                        .append_pair("lookback", "24h");
                    if let Some(operation) = &query.operation {
                        url.query_pairs_mut().append_pair("operation", operation);
                    }
                }
                match url {
                    Ok(url) => url.to_string(),
                    Err(e) => {
                        eprintln!("mlops traces: {base}: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        };
        let body: Value = match http.get(&url).send().await {
            Ok(response) if response.status().is_success() => {
                response.json().await.unwrap_or(Value::Null)
            }
            Ok(response) => {
                eprintln!("mlops traces: {url}: {}", response.status());
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!(
                    "mlops traces: {url}: {e} (is Jaeger running? `mlops up --jaeger` starts it)"
                );
                return ExitCode::FAILURE;
            }
        };
        let traces = body["data"].as_array().cloned().unwrap_or_default();
        if traces.is_empty() {
            println!("no traces found");
            return ExitCode::SUCCESS;
        }
        match query.trace {
            Some(_) => print!("{}", tree(&traces[0])),
            None => {
                for trace in &traces {
                    println!("{}", summary(trace));
                }
            }
        }
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_trace_prints_as_a_tree_of_services_and_operations() {
        let trace = json!({
            "traceID": "t1",
            "processes": {"p1": {"serviceName": "monitoring"}, "p2": {"serviceName": "training"}},
            "spans": [
                {"spanID": "b", "operationName": "training run", "processID": "p2",
                 "startTime": 20, "duration": 5000,
                 "references": [{"refType": "CHILD_OF", "spanID": "a"}]},
                {"spanID": "a", "operationName": "drift detected", "processID": "p1",
                 "startTime": 10, "duration": 1500,
                 "references": [{"refType": "FOLLOWS_FROM", "spanID": "x"}]},
                {"spanID": "c", "operationName": "trial", "processID": "p2",
                 "startTime": 30, "duration": 2000,
                 "references": [{"refType": "CHILD_OF", "spanID": "b"}]}
            ]
        });
        assert_eq!(
            tree(&trace),
            "trace t1 — 3 spans\n\
             monitoring  drift detected  1.5 ms  (links to 1)\n\
             \x20 training    training run  5.0 ms\n\
             \x20   training    trial  2.0 ms\n"
        );
        assert_eq!(
            summary(&trace).split_whitespace().collect::<Vec<_>>(),
            [
                "t1",
                "monitoring:",
                "drift",
                "detected",
                "3",
                "spans",
                "monitoring,",
                "training"
            ]
        );
    }
}
