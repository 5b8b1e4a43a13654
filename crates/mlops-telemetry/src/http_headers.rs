//! W3C trace context from incoming HTTP requests, so a caller's trace continues here.

use opentelemetry::{Context, propagation::Extractor};

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// The remote parent named by a request's `traceparent`/`tracestate` (empty if none).
pub fn extract_http_context(headers: &http::HeaderMap) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.extract(&HttpExtractor(headers))
    })
}
