//! Flows that outlive one request: a span's context written down (a W3C `traceparent`
//! string kept in a database row or in memory) and taken up again later, by another task or
//! after a restart, so a drift remediation stays one trace from the drift event to the
//! promotion. Also: trace context on outgoing HTTP requests between services.

use std::collections::HashMap;

use opentelemetry::{
    Context,
    propagation::{Extractor, Injector},
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
};
use tracing_opentelemetry::OpenTelemetrySpanExt;

struct Fields(HashMap<String, String>);

impl Injector for Fields {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

impl Extractor for Fields {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// The W3C `traceparent` of `span` (`00-<trace id>-<span id>-<flags>`), when it has a
/// valid context.
pub fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut fields = Fields(HashMap::new());
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut fields));
    fields.0.remove("traceparent")
}

/// The `traceparent` of the current span.
pub fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

/// Where a flow stands when something is written down to be continued later: its trace id
/// (the one named, else the current span's) and the current span as `traceparent` when
/// that span belongs to the flow.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FlowHere {
    pub trace_id: Option<String>,
    pub traceparent: Option<String>,
}

/// The flow named by `trace_id` (or the current span's own), as it stands in this span.
pub fn flow_here(trace_id: Option<&str>) -> FlowHere {
    let here = current_traceparent();
    let here_trace = here.as_deref().and_then(trace_id_in).map(str::to_owned);
    let trace_id = trace_id.map(str::to_owned).or_else(|| here_trace.clone());
    FlowHere {
        traceparent: here.filter(|_| here_trace == trace_id),
        trace_id,
    }
}

/// The span context of `span`, for a link from another span.
pub fn span_context_of(span: &tracing::Span) -> Option<SpanContext> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// The trace id a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`) names.
pub fn trace_id_in(traceparent: &str) -> Option<&str> {
    traceparent.get(3..35)
}

/// The parent to continue a flow under: the span written down as `traceparent` when there is
/// one; else, when only the flow's `trace_id` is known (a record written before the span was
/// kept), a remote parent in that trace, so that what follows still joins the flow's trace.
pub fn flow_parent(traceparent: Option<&str>, trace_id: Option<&str>) -> Option<Context> {
    if let Some(traceparent) = traceparent {
        let fields = Fields(HashMap::from([(
            "traceparent".to_owned(),
            traceparent.to_owned(),
        )]));
        let context = opentelemetry::global::get_text_map_propagator(|p| p.extract(&fields));
        if context.span().span_context().is_valid() {
            return Some(context);
        }
    }
    let trace_id = TraceId::from_hex(trace_id?).ok()?;
    if trace_id == TraceId::INVALID {
        return None;
    }
    // The parent span is unknown; its id is derived from the trace's so it is stable.
    let bytes = trace_id.to_bytes();
    let mut span = [0u8; 8];
    span.copy_from_slice(&bytes[8..]);
    span[7] |= 1;
    let span_context = SpanContext::new(
        trace_id,
        SpanId::from_bytes(span),
        TraceFlags::SAMPLED,
        true,
        TraceState::default(),
    );
    Some(Context::new().with_remote_span_context(span_context))
}

/// Makes `span` continue the flow written down as `traceparent` (or known by `trace_id`).
/// Returns the span for chaining; a span without either stays a root.
pub fn continue_flow(
    span: tracing::Span,
    traceparent: Option<&str>,
    trace_id: Option<&str>,
) -> tracing::Span {
    if let Some(parent) = flow_parent(traceparent, trace_id) {
        let _ = span.set_parent(parent);
    }
    span
}

/// Outgoing HTTP requests between services carry the current span's context, so the
/// callee's server span is its child.
pub trait Traced {
    #[must_use]
    fn traced(self) -> Self;
}

impl Traced for reqwest::RequestBuilder {
    fn traced(self) -> Self {
        let context = tracing::Span::current().context();
        if !context.span().span_context().is_valid() {
            return self;
        }
        let mut fields = Fields(HashMap::new());
        opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut fields));
        fields
            .0
            .into_iter()
            .filter(|(_, value)| !value.is_empty())
            .fold(self, |request, (key, value)| request.header(key, value))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_known_only_by_its_trace_id_is_continued_in_that_trace() {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
        let parent = flow_parent(None, Some(trace)).expect("a parent");
        assert_eq!(parent.span().span_context().trace_id().to_string(), trace);
        let written = format!("00-{trace}-00f067aa0ba902b7-01");
        let parent = flow_parent(Some(&written), Some("ffffffffffffffffffffffffffffffff"))
            .expect("a parent");
        assert_eq!(
            parent.span().span_context().span_id().to_string(),
            "00f067aa0ba902b7",
            "the written span wins over the bare trace id"
        );
        assert!(flow_parent(Some("garbage"), None).is_none());
        assert!(flow_parent(None, Some("not hex")).is_none());
    }
}
